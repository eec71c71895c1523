"""Serving under load: `python -m pabee.serve` on 127.0.0.1, its throughput and latency, and its stream defence on
clean and attacked streams.

    python benchmarks/benchmark_serve.py --model output/demo --plain_model output/plain --data_dir data/SST-2 \
        --output benchmarks/results/serve.json
    python benchmarks/benchmark_serve.py --model output/demo --data_dir data/SST-2 --quick \
        --output /tmp/serve_quick.json      # tiny bounds: checks that everything runs, measures nothing

Each served model runs in its own server (a subprocess, on a free port of 127.0.0.1), fed by a load generator of
--concurrency clients (threads, one keep-alive connection each) that send one review per request, until
--max_requests answers or --seconds, after --warmup_requests. Three servers:
- the model with its saved exit setting (or --serve_flags) and its stream defence (calibrated at startup on the
  calibration set saved with it): throughput, then the streams;
- the same model at full depth (--patience 0, no defence): throughput;
- the --plain_model, fine-tuned without early exit, at full depth on the same server and engine: throughput.
Before any server starts, offline `pabee.classify` at batch 32 on the same reviews gives the reference examples/s.

Streams (to the first server, --stream_concurrency clients, in order):
- clean: every dev review, in a fresh seeded order, --clean_repeats times: false alarms (the cap engaging), accuracy,
  layer speed-up;
- attacked: --stream_prefix clean reviews, then --attack_length requests of which a share (--attack_shares) are
  adversarial, then --stream_suffix clean ones. The adversarial texts are made by `pabee.attack --goal slowdown`
  aimed at the served setting, from --attack_reviews dev reviews drawn apart (seeded) from the clean ones; they are
  cached beside --output (or read from --attack_file). For each stream: the layer speed-up over the attack phase and
  over the whole stream, defended and undefended (the undefended exits from offline pabee.classify on the same
  texts), the accuracy on its clean requests, and after how many requests the cap engaged once the attack started
  and lifted once it stopped.

Raw figures (every latency, every stream request's answer) go to --output; a table is printed. The CPU's capability
(`torch.backends.cpu.get_cpu_capability()`) is recorded with them. The load generator runs on the same machine as
the server, so it takes some of the CPU the server could use.
"""

import argparse
import hashlib
import http.client
import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the repository root, when run as a script
from pabee import serve  # noqa: E402
from pabee.attack import AttackConfig, Victim, attack, model_kwargs_from  # noqa: E402
from pabee.classify import InputError, classify, load_model  # noqa: E402
from pabee.glue import get_task, read_glue_split  # noqa: E402

STARTUP_SECONDS = 600


class BenchmarkError(Exception):
    """A bad argument or input, reported as one line."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")
    parser.add_argument("--model", required=True, help="The trained PABEE model folder served (e.g. output/demo).")
    parser.add_argument("--plain_model", default=None,
                        help="A model fine-tuned without early exit (e.g. output/plain), served at full depth.")
    parser.add_argument("--data_dir", required=True, help="The SST-2 folder whose dev.tsv gives the reviews.")
    parser.add_argument("--output", default="benchmarks/results/serve.json", help="Raw figures, as JSON.")
    parser.add_argument("--overwrite", action="store_true", help="Replace --output if it exists.")
    parser.add_argument("--serve_flags", default="",
                        help="Extra flags for the first server (the exit setting, the defence), e.g. '--patience 1 "
                             "--exit_confidence 0.75 --defence_cap 4'; the attack aims at the setting they give.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of each server's worker and of offline classify. Default: torch's.")
    parser.add_argument("--concurrency", default="1,8,32", help="Comma-separated numbers of concurrent clients.")
    parser.add_argument("--seconds", type=float, default=30, help="Longest time of one throughput run.")
    parser.add_argument("--max_requests", type=int, default=2000, help="Most requests of one throughput run.")
    parser.add_argument("--warmup_requests", type=int, default=200,
                        help="Requests sent before each timed run, at its concurrency (a fresh worker is slow on the "
                             "first batches of each shape).")
    parser.add_argument("--stream_concurrency", type=int, default=8, help="Concurrent clients sending a stream.")
    parser.add_argument("--clean_repeats", type=int, default=5, help="Passes of the clean stream over the dev set.")
    parser.add_argument("--attack_shares", default="0.25,0.5,1.0",
                        help="Comma-separated shares of adversarial requests in the attack phase of each stream.")
    parser.add_argument("--stream_prefix", type=int, default=200, help="Clean requests before the attack phase.")
    parser.add_argument("--attack_length", type=int, default=400, help="Requests in the attack phase.")
    parser.add_argument("--stream_suffix", type=int, default=300, help="Clean requests after the attack phase.")
    parser.add_argument("--attack_reviews", type=int, default=400,
                        help="Dev reviews attacked (the others are the clean requests of the attacked streams).")
    parser.add_argument("--query_budget", type=int, default=30, help="Queries per attacked review (pabee.attack).")
    parser.add_argument("--attack_file", default=None,
                        help="Adversarial texts to use instead of making them: a JSON list of strings.")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the splits, the orders and the attack.")
    parser.add_argument("--quick", action="store_true",
                        help="Tiny bounds everywhere: a check that the benchmark runs, not a measurement.")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.max_requests, args.warmup_requests = 2, 24, 4
        args.clean_repeats, args.stream_prefix, args.attack_length, args.stream_suffix = 1, 12, 16, 16
        args.attack_reviews, args.query_budget = 8, 4
    try:
        args.concurrency = [int(value) for value in args.concurrency.split(",")]
        args.attack_shares = [float(value) for value in args.attack_shares.split(",")]
    except ValueError:
        parser.error("--concurrency and --attack_shares are comma-separated numbers")
    if min(args.concurrency) < 1 or not all(0 < share <= 1 for share in args.attack_shares):
        parser.error("--concurrency values must be >= 1 and --attack_shares in (0, 1]")
    for name in ("max_requests", "stream_concurrency", "clean_repeats", "attack_length", "attack_reviews",
                 "query_budget"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# The server and the load generator


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m pabee.serve` in a subprocess on a free port of 127.0.0.1, its output in a log file."""

    def __init__(self, model, flags, threads, log_path):
        self.port = free_port()
        command = [sys.executable, "-m", "pabee.serve", "--model", model, "--port", str(self.port), *flags]
        if threads:
            command += ["--threads", str(threads)]
        self.command = " ".join(shlex.quote(part) for part in command)
        self.log = open(log_path, "w", encoding="utf-8")
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchmarkError(f"the server did not start ({self.command}); see {log_path}")
            time.sleep(0.5)

    def healthy(self):
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except OSError:
            return False

    def info(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request("GET", "/info")
        return json.loads(connection.getresponse().read())["model"]

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def send(texts, port, concurrency, max_seconds=None):
    """
    Send each text as one request, in order, from `concurrency` clients (threads with a keep-alive connection each),
    until all are answered or `max_seconds` pass. Returns one record per request answered (index, latency in seconds,
    HTTP status, the answer) and the wall time.
    """
    records, lock, position = [], threading.Lock(), [0]
    deadline = None if max_seconds is None else time.perf_counter() + max_seconds

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                index = position[0]
                if index >= len(texts) or (deadline is not None and time.perf_counter() > deadline):
                    return
                position[0] += 1
            body = json.dumps({"texts": [texts[index]]})
            started = time.perf_counter()
            connection.request("POST", "/classify", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
            latency = time.perf_counter() - started
            answer = json.loads(payload)["answers"][0] if response.status == 200 else None
            with lock:
                records.append({"index": index, "latency": latency, "status": response.status, "answer": answer})

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return sorted(records, key=lambda record: record["index"]), wall


def throughput(port, texts, args):
    """Requests/s and latency percentiles of single-review requests at each --concurrency."""
    runs = []
    for concurrency in args.concurrency:
        send(texts[: args.warmup_requests], port, concurrency)
        records, wall = send(texts[: args.max_requests], port, concurrency, args.seconds)
        latencies = np.array([record["latency"] for record in records])
        failed = sum(record["status"] != 200 for record in records)
        runs.append({"concurrency": concurrency, "requests": len(records), "failed": failed, "seconds": wall,
                     "requests_per_second": len(records) / wall, "p50_ms": float(np.percentile(latencies, 50) * 1e3),
                     "p99_ms": float(np.percentile(latencies, 99) * 1e3), "latencies_s": latencies.tolist()})
        print(f"  concurrency {concurrency}: {len(records) / wall:.1f} requests/s", flush=True)
    return runs


# ---------------------------------------------------------------------------------------------------------------------
# Offline reference and the attack


def offline_examples_per_second(model, tokenizer, texts, flags):
    """Examples/s of offline pabee.classify at batch 32 on `texts` (after one warm-up batch), and its answers."""
    inputs = [(text, None) for text in texts]
    classify(model, tokenizer, inputs[:32], batch_size=32, **flags)
    started = time.perf_counter()
    answers = classify(model, tokenizer, inputs, batch_size=32, **flags)
    return len(inputs) / (time.perf_counter() - started), answers


def adversarial_texts(args, model, tokenizer, reviews, kwargs):
    """pabee.attack --goal slowdown on `reviews`, aimed at `kwargs`; cached beside --output (or --attack_file)."""
    if args.attack_file:
        texts = json.loads(Path(args.attack_file).read_text())
        if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
            raise BenchmarkError(f"--attack_file {args.attack_file} must hold a JSON list of texts")
        return texts, {"file": args.attack_file}
    key = {"model": os.path.abspath(args.model), "setting": kwargs, "query_budget": args.query_budget,
           "seed": args.seed, "reviews": hashlib.sha256("\n".join(reviews).encode()).hexdigest()}
    cache = Path(args.output).with_name(Path(args.output).stem + "_attack_texts.json")
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached["key"] == key:
            print(f"Adversarial texts from {cache}", flush=True)
            return cached["texts"], cached["summary"]
    config = AttackConfig(goal="slowdown", query_budget=args.query_budget, seed=args.seed)
    results = attack(Victim(model, tokenizer, batch_size=64), reviews, kwargs, config,
                     description="Attacking (slowdown, aimed at the served setting)")
    texts = [result.adversarial for result in results]
    summary = {"reviews": len(reviews), "success_rate": float(np.mean([result.success for result in results])),
               "clean_avg_exit": float(np.mean([result.clean_exit_layer for result in results])),
               "attacked_avg_exit": float(np.mean([result.attacked_exit_layer for result in results]))}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "texts": texts, "summary": summary}, indent=1))
    return texts, summary


# ---------------------------------------------------------------------------------------------------------------------
# Streams


def first_index(states, start, wanted):
    """The first position from `start` whose state is `wanted`, counted from `start`; None if there is none."""
    for offset, state in enumerate(states[start:]):
        if state == wanted:
            return offset
    return None


def stream_figures(records, kinds, labels, undefended_exits, num_layers, attack_span=None):
    """Speed-ups, clean accuracy, engagements and delays of one stream, from the server's answers."""
    capped = [record["answer"]["capped"] for record in records]
    exits = np.array([record["answer"]["exit_layer"] for record in records])
    undefended = np.array(undefended_exits)
    clean = np.array([kind == "clean" for kind in kinds])
    correct = np.array([record["answer"]["label_id"] == label for record, label in zip(records, labels)])
    figures = {
        "requests": len(records),
        "layer_speedup": num_layers / exits.mean(),
        "layer_speedup_undefended": num_layers / undefended.mean(),
        "clean_accuracy": float(correct[clean].mean()),
        "capped_requests": int(sum(capped)),
        "engagements": int(sum(1 for before, now in zip([False] + capped, capped) if now and not before)),
    }
    if attack_span is not None:
        start, end = attack_span
        figures.update(
            attack_phase_layer_speedup=num_layers / exits[start:end].mean(),
            attack_phase_layer_speedup_undefended=num_layers / undefended[start:end].mean(),
            false_alarms_before_attack=int(sum(capped[:start])),
            engaged_after=first_index(capped, start, True),
            released_after=None if not any(capped[start:end]) else
            first_index(capped, end, False) if capped[end - 1] else 0,
        )
    return figures


def detection_bound(clean_exits, attack_exits, share, false_alarm_rate, num_layers):
    """
    The Kullback-Leibler divergence (nats per request) of a stream's exit layers, a share `share` of them attacked,
    from clean ones, and the requests any rule reading exit layers needs to tell them apart at `false_alarm_rate`:
    about ln(1 / false_alarm_rate) / divergence (Lorden, 1971). Counts get half a request added (no empty layer).
    """
    def distribution(exits):
        counts = np.bincount(exits, minlength=num_layers + 1)[1:] + 0.5
        return counts / counts.sum()

    clean = distribution(clean_exits)
    mixed = (1 - share) * clean + share * distribution(attack_exits)
    divergence = float(np.sum(mixed * np.log(mixed / clean)))
    needed = np.log(1 / false_alarm_rate) / divergence if divergence > 0 else float("inf")
    return {"divergence_nats_per_request": divergence, "requests_needed": float(needed)}


def attacked_stream(args, share, clean_pool, adversarial, rng):
    """(texts, kinds, indexes into their pools) of one attacked stream: clean prefix, attack phase, clean suffix."""
    attack_count = round(share * args.attack_length)
    phase = ["attack"] * attack_count + ["clean"] * (args.attack_length - attack_count)
    rng.shuffle(phase)
    kinds = ["clean"] * args.stream_prefix + phase + ["clean"] * args.stream_suffix
    clean_order = rng.choices(range(len(clean_pool)), k=kinds.count("clean"))
    attack_order = rng.choices(range(len(adversarial)), k=attack_count)
    picks, clean_iter, attack_iter = [], iter(clean_order), iter(attack_order)
    for kind in kinds:
        picks.append(next(clean_iter) if kind == "clean" else next(attack_iter))
    texts = [clean_pool[i] if kind == "clean" else adversarial[i] for kind, i in zip(kinds, picks)]
    return texts, kinds, picks


def run_streams(args, port, num_layers, reviews, gold, clean_ids, attack_ids, adversarial, undefended_exit,
                false_alarm_rate):
    """
    The clean streams and the attacked ones, on the server at `port`; `undefended_exit` holds the exit layers offline
    classify gives without the cap, per dev review ("clean") and per adversarial text ("attack").
    """
    streams = []
    for repeat in range(args.clean_repeats):
        order = list(range(len(reviews)))
        random.Random(args.seed + repeat).shuffle(order)
        records, _ = send([reviews[i] for i in order], port, args.stream_concurrency)
        figures = stream_figures(records, ["clean"] * len(order), [gold[i] for i in order],
                                 [undefended_exit["clean"][i] for i in order], num_layers)
        figures["false_alarms"] = figures.pop("engagements")
        streams.append({"stream": f"clean {repeat + 1}", **figures,
                        "raw": [dict(review=i, gold=gold[i], **record["answer"])
                                for i, record in zip(order, records)]})
        print(f"  clean stream {repeat + 1}: {figures['false_alarms']} false alarms", flush=True)
    clean_pool = [reviews[i] for i in clean_ids]
    for share in args.attack_shares:
        rng = random.Random(f"{args.seed}-{share}")
        texts, kinds, picks = attacked_stream(args, share, clean_pool, adversarial, rng)
        records, _ = send(texts, port, args.stream_concurrency)
        labels = [gold[clean_ids[i]] if kind == "clean" else gold[attack_ids[i]] for kind, i in zip(kinds, picks)]
        undefended = [undefended_exit["clean"][clean_ids[i]] if kind == "clean" else undefended_exit["attack"][i]
                      for kind, i in zip(kinds, picks)]
        start = args.stream_prefix
        figures = stream_figures(records, kinds, labels, undefended, num_layers, (start, start + args.attack_length))
        figures["detection_bound"] = detection_bound(undefended_exit["clean"], undefended_exit["attack"], share,
                                                     false_alarm_rate, num_layers)
        streams.append({"stream": f"{share:.0%} attack", "attack_share": share, **figures,
                        "raw": [dict(kind=kind, source=i, gold=label, **record["answer"])
                                for kind, i, label, record in zip(kinds, picks, labels, records)]})
        print(f"  {share:.0%} attack: engaged after {figures['engaged_after']}, released after "
              f"{figures['released_after']}", flush=True)
    return streams


# ---------------------------------------------------------------------------------------------------------------------
# Report


def format_table(results):
    lines = ["Throughput, one review per request (load generator on the same machine)",
             f"{'served':<28}{'clients':>8}{'requests/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'vs offline b32':>16}"]
    for name, runs in results["throughput"].items():
        offline = results["offline_examples_per_second"][name]
        for run in runs:
            lines.append(f"{name:<28}{run['concurrency']:>8}{run['requests_per_second']:>12.1f}{run['p50_ms']:>9.1f}"
                         f"{run['p99_ms']:>9.1f}{run['requests_per_second'] / offline:>15.2f}x")
    lines.append("offline pabee.classify, batch 32: " + ", ".join(
        f"{name} {value:.1f} examples/s" for name, value in results["offline_examples_per_second"].items()))
    lines += ["", "Streams (layer speed-up = layers / average exit layer; undefended: the same texts without the cap)",
              f"{'stream':<14}{'speed-up':>9}{'undef.':>8}{'attack phase':>13}{'undef.':>8}{'clean acc':>10}"
              f"{'undef. acc':>11}{'engaged':>9}{'released':>9}{'alarms':>7}{'bound':>7}"]
    for stream in results["streams"]:
        phase = [stream.get(f"attack_phase_layer_speedup{kind}") for kind in ("", "_undefended")]
        phase = ["-" if value is None else f"{value:.2f}x" for value in phase]
        bound = f"{stream['detection_bound']['requests_needed']:.0f}" if "detection_bound" in stream else "-"
        lines.append(
            f"{stream['stream']:<14}{stream['layer_speedup']:>8.2f}x{stream['layer_speedup_undefended']:>7.2f}x"
            f"{phase[0]:>13}{phase[1]:>8}{stream['clean_accuracy']:>10.3f}{stream['clean_accuracy_undefended']:>11.3f}"
            f"{str(stream.get('engaged_after', '-')):>9}{str(stream.get('released_after', '-')):>9}"
            f"{stream.get('false_alarms', stream.get('false_alarms_before_attack')):>7}"
            f"{bound:>7}")
    lines.append("engaged / released: requests from the attack's start / end to the first capped / uncapped answer; "
                 "bound: requests any rule reading exit layers needs to engage at the defence's false-alarm rate")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    try:
        results = run(args)
    except (BenchmarkError, InputError, OSError, ValueError) as error:
        raise SystemExit(f"benchmark_serve.py: error: {error}") from None
    print(format_table(results))
    return results


def run(args):
    if os.path.exists(args.output) and not args.overwrite:
        raise BenchmarkError(f"{args.output} exists: give another --output, or --overwrite to replace it")
    task = get_task("sst-2")
    dev = read_glue_split(args.data_dir, task, "dev")
    reviews, gold = [example.text_a for example in dev], [task.label_to_id(example.label) for example in dev]
    if len(dev) <= args.attack_reviews:
        raise BenchmarkError(f"--attack_reviews {args.attack_reviews} leaves no clean reviews of the {len(dev)} dev "
                             "reviews")
    order = np.random.default_rng(args.seed).permutation(len(dev))
    attack_ids, clean_ids = order[: args.attack_reviews].tolist(), order[args.attack_reviews:].tolist()
    serve_flags = shlex.split(args.serve_flags)
    results = {"command": "python benchmarks/benchmark_serve.py " + " ".join(sys.argv[1:]),
               "machine": {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpus": os.cpu_count(),
                           "platform": platform.platform(), "torch": torch.__version__},
               "settings": {key: value for key, value in vars(args).items()}}

    # Offline reference, and the adversarial texts (before any server runs)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    num_layers = model.config.num_hidden_layers
    parsed = serve.parse_args(["--model", args.model, *serve_flags])
    served_flags = serve.exit_flags_of(parsed)
    adversarial, attack_summary = adversarial_texts(args, model, tokenizer, [reviews[i] for i in attack_ids],
                                                    model_kwargs_from(parsed, model.config))
    offline, answers = {}, {}
    offline["early exit"], answers["clean"] = offline_examples_per_second(model, tokenizer, reviews, served_flags)
    offline["full depth"], _ = offline_examples_per_second(model, tokenizer, reviews, {"patience": 0})
    if args.plain_model:
        offline["plain, full depth"], _ = offline_examples_per_second(*load_model(args.plain_model), reviews,
                                                                      {"patience": 0})
    answers["attack"] = classify(model, tokenizer, [(text, None) for text in adversarial], **served_flags)
    exit_layers = {kind: [answer.exit_layer for answer in found] for kind, found in answers.items()}
    results.update(offline_examples_per_second=offline, attack=attack_summary)
    del model

    # Servers: throughput, and the streams on the defended one
    logs = Path(tempfile.mkdtemp(prefix="benchmark-serve-logs-"))
    cycled = [reviews[i % len(reviews)] for i in range(args.max_requests)]
    full_depth = ["--patience", "0", "--stream_defence", "off"]
    servers = [("early exit", args.model, serve_flags), ("full depth", args.model, full_depth)]
    if args.plain_model:
        servers.append(("plain, full depth", args.plain_model, full_depth))
    results["throughput"], results["servers"] = {}, {}
    for name, path, flags in servers:
        print(f"Serving {name}: {path} {' '.join(flags)}", flush=True)
        server = ServerProcess(path, flags, args.threads, logs / f"{name.replace(' ', '_').replace(',', '')}.log")
        try:
            results["servers"][name] = {"command": server.command, "info": server.info()}
            results["throughput"][name] = throughput(server.port, cycled, args)
            if name == "early exit":
                defence = results["servers"][name]["info"]["stream_defence"]
                if defence is None:
                    raise BenchmarkError(f"the server of {args.model} runs without a stream defence (no "
                                         "calibration.jsonl or saved calibration): pass --serve_flags "
                                         "'--defence_calibration FILE'")
                results["streams"] = run_streams(args, server.port, num_layers, reviews, gold, clean_ids, attack_ids,
                                                 adversarial, exit_layers, defence["settings"]["false_alarm_rate"])
        finally:
            server.stop()
    shutil.rmtree(logs)  # kept only when a server fails, for its error
    add_undefended_accuracy(results["streams"], gold, clean_ids, answers["clean"])

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as file:
        json.dump(results, file, indent=1)
    print(f"Raw figures written to {args.output}")
    return results


def add_undefended_accuracy(streams, gold, clean_ids, clean_answers):
    """The accuracy offline pabee.classify (no cap) gets on each stream's clean requests."""
    for stream in streams:
        if "attack_share" in stream:
            reviews = [clean_ids[record["source"]] for record in stream["raw"] if record["kind"] == "clean"]
        else:
            reviews = [record["review"] for record in stream["raw"]]
        stream["clean_accuracy_undefended"] = float(np.mean([clean_answers[i].label_id == gold[i] for i in reviews]))


if __name__ == "__main__":
    main()
