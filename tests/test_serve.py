"""`python -m pabee.serve`: a real server in a subprocess on a free loopback port, with a tiny model folder.

Answers equal `pabee.classify`'s under concurrent clients; bad requests get a 4xx with a one-line reason and the
server keeps serving; /metrics parses as Prometheus text; the stream defence engages on deep traffic and lifts when
it stops, where its decision rule says; SIGTERM answers the requests in flight before the server exits; startup
errors are one line.

    python -m pytest tests/test_serve.py -q
"""

import http.client
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fixtures_glue import FILLER, NEGATIVE, POSITIVE
from prometheus_client.parser import text_string_to_metric_families
from test_export import model_folder  # noqa: F401 (fixture: a tiny sentiment model whose exits spread)

from pabee import export, serve
from pabee.classify import classify, load_exported_model, load_model
from pabee.stream_defence import DefenceSettings, derive_thresholds, run_monitor

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVED = dict(patience=1, exit_confidence=0.9)  # on the tiny model, some texts exit at layer 2 and some at 6
SERVED_FLAGS = ["--patience", "1", "--exit_confidence", "0.9"]
CAP, WINDOW = 3, 8
STARTUP_SECONDS = 180  # two processes import torch and transformers; slow on a busy machine


@pytest.fixture(scope="module")
def texts(model_folder):
    """Texts of the fixture's words that exit early (shallow) and at the last layer (deep) at the served setting."""
    rng = random.Random(0)
    words = POSITIVE + NEGATIVE + FILLER
    candidates = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for _ in range(500)]
    model, tokenizer = load_model(model_folder)
    answers = classify(model, tokenizer, [(text, None) for text in candidates], **SERVED)
    shallow = [text for text, answer in zip(candidates, answers) if answer.exit_layer <= 2]
    deep = [text for text, answer in zip(candidates, answers) if answer.exit_layer == 6]
    assert len(shallow) >= 60 and len(deep) >= 20, "the tiny model should spread the exits"
    return {"shallow": shallow, "deep": deep, "model": model, "tokenizer": tokenizer}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m pabee.serve` in a subprocess, on a free port."""

    def __init__(self, *argv):
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
        self.process = subprocess.Popen([sys.executable, "-m", "pabee.serve", *argv, "--port", str(self.port),
                                         "--threads", "1"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + STARTUP_SECONDS
        while self.get("/health", quiet=True) != (200, b"ok"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"the server did not start: {self.process.communicate()[0]}")
            time.sleep(0.3)

    def request(self, method, path, body=None, timeout=60):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def get(self, path, quiet=False):
        try:
            return self.request("GET", path)
        except OSError:
            if quiet:
                return None
            raise

    def classify(self, texts):
        status, body = self.request("POST", "/classify", json.dumps({"texts": texts}))
        assert status == 200, body
        return json.loads(body)["answers"]

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=60)
        return self.process.returncode, output


@pytest.fixture(scope="module")
def server(model_folder, texts, tmp_path_factory):
    calibration = tmp_path_factory.mktemp("calibration") / "clean.txt"
    calibration.write_text("\n".join(texts["shallow"][:40]) + "\n")
    server = Server("--model", model_folder, *SERVED_FLAGS, "--defence_cap", str(CAP), "--defence_window",
                    str(WINDOW), "--defence_false_alarm_rate", "1e-4",
                    "--defence_calibration", str(calibration), "--batch_timeout", "0.05", "--max_texts", "8",
                    "--max_text_bytes", "200")
    yield server
    returncode, output = server.stop()
    assert returncode == 0, output


def expected_answer(texts, text, capped):
    """
    What pabee.classify answers for `text` alone, under the defence's cap where the server applied it. Labels and
    exit layers are exact whatever the batch; a probability moves in the last float32 bits with the padding.
    """
    cap = {"max_exit_layer": CAP} if capped else {}
    answer = classify(texts["model"], texts["tokenizer"], [(text, None)], **SERVED, **cap)[0]
    return {"label": ["negative", "positive"][answer.label_id], "label_id": answer.label_id,
            "probability": pytest.approx(answer.value, abs=1e-6), "exit_layer": answer.exit_layer,
            "capped": capped}


def metric_samples(server):
    status, body = server.get("/metrics")
    assert status == 200
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    return families, {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                      for family in families.values() for sample in family.samples}


# ---------------------------------------------------------------------------------------------------------------------
# Answers, bad requests, metrics


def test_answers_equal_classifys_under_concurrent_clients(server, texts):
    rng = random.Random(1)
    pool = texts["shallow"][:30] + texts["deep"][:10]
    requests = [rng.sample(pool, rng.randint(1, 3)) for _ in range(48)]
    _, before = metric_samples(server)
    responses = [None] * len(requests)

    def client(indexes):
        for index in indexes:
            responses[index] = server.classify(requests[index])

    threads = [threading.Thread(target=client, args=(range(i, len(requests), 16),)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for request, answers in zip(requests, responses):
        assert len(answers) == len(request)
        for text, answer in zip(request, answers):
            assert answer == expected_answer(texts, text, answer["capped"])
    _, after = metric_samples(server)
    one = ("pabee_batch_requests_bucket", (("le", "1.0"),))
    batches = after[("pabee_batch_requests_count", ())] - before[("pabee_batch_requests_count", ())]
    alone = after[one] - before[one]
    assert alone < batches, "concurrent requests should have shared batches"


BAD_REQUESTS = [
    (b"{not json", 400, "not JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b"{}", 400, '"texts"'),
    (b'{"texts": []}', 400, "non-empty list"),
    (b'{"texts": "a good film"}', 400, "non-empty list"),
    (b'{"texts": ["a good film", 3]}', 400, "text 2 is not a string"),
    (b'{"texts": ["a good film", "  "]}', 400, "text 2 is blank"),
    (json.dumps({"texts": ["good"] * 9}).encode(), 413, "at most 8"),
    (json.dumps({"texts": ["good " * 50]}).encode(), 413, "at most 200"),
    (json.dumps({"texts": ["a good film\tdull"]}).encode(), 400, "takes single texts"),
    (b'{"texts": ["a good film \\ud800"]}', 400, "lone surrogate"),
    (json.dumps({"texts": ["x" * 20000]}).encode(), 413, "body passed"),
]


@pytest.mark.parametrize("body, status, reason", BAD_REQUESTS)
def test_a_bad_request_gets_a_4xx_with_a_one_line_reason_and_the_server_keeps_serving(
        server, texts, body, status, reason):
    _, before = metric_samples(server)
    got_status, got_body = server.request("POST", "/classify", body)
    assert got_status == status
    detail = json.loads(got_body)["detail"]
    assert reason in detail and "\n" not in detail
    _, after = metric_samples(server)
    counted = ("pabee_requests_total", (("status", str(status)),))
    assert after[counted] - before.get(counted, 0) == 1
    text = texts["shallow"][0]
    assert server.classify([text]) == [expected_answer(texts, text, False)]


def test_metrics_parse_as_prometheus_text_and_count_what_ran(server, texts):
    families, before = metric_samples(server)
    assert families["pabee_request_latency_seconds"].type == "histogram"
    assert families["pabee_exit_layer"].type == "histogram"
    assert families["pabee_stream_defence_engaged"].type == "gauge"
    assert families["pabee_requests"].type == "counter"
    sent = texts["shallow"][:5]
    answers = server.classify(sent)
    _, after = metric_samples(server)
    assert after[("pabee_exit_layer_count", ())] - before[("pabee_exit_layer_count", ())] == len(sent)
    assert after[("pabee_exit_layer_sum", ())] - before[("pabee_exit_layer_sum", ())] == sum(
        answer["exit_layer"] for answer in answers)
    assert after[("pabee_requests_total", (("status", "200"),))] - before[("pabee_requests_total",
                                                                          (("status", "200"),))] == 1
    assert after[("pabee_request_latency_seconds_count", ())] > before[("pabee_request_latency_seconds_count", ())]
    info = json.loads(server.get("/info")[1])["model"]["stream_defence"]["thresholds"]
    assert after[("pabee_stream_defence_engage_at", ())] == info["engage_at"]


# ---------------------------------------------------------------------------------------------------------------------
# The stream defence


def test_the_defence_engages_on_deep_traffic_and_lifts_when_it_stops(server, texts):
    thresholds = json.loads(server.get("/info")[1])["model"]["stream_defence"]["thresholds"]
    shallow, deep = texts["shallow"], texts["deep"]
    stream = shallow[:WINDOW] + deep[:12] + shallow[WINDOW : WINDOW + 12]  # a clean window first: the cap is off
    natural = [expected_answer(texts, text, False)["exit_layer"] for text in stream]
    expected = run_monitor(natural, CAP, WINDOW, thresholds["engage_at"], thresholds["release_at"])
    assert any(expected[WINDOW:]) and not expected[-1]
    answers = [server.classify([text])[0] for text in stream]  # one at a time: the order the defence sees
    assert [answer["capped"] for answer in answers] == expected
    for text, answer in zip(stream, answers):
        assert answer == expected_answer(texts, text, answer["capped"])
    assert {answer["exit_layer"] for answer, on in zip(answers, expected) if on} <= set(range(1, CAP + 1))
    families, _ = metric_samples(server)
    assert families["pabee_stream_defence_engagements"].samples[0].value >= 1


def run_main(capsys, *argv):
    with pytest.raises(SystemExit) as stop:
        serve.main([str(arg) for arg in argv])
    return stop.value.code, capsys.readouterr().err


def test_calibrate_only_saves_the_thresholds_that_a_restart_reads(model_folder, texts, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    calibration = tmp_path / "clean.txt"
    calibration.write_text("\n".join(texts["shallow"][:30] + texts["deep"][:10]) + "\n")
    flags = [*SERVED_FLAGS, "--defence_cap", "3", "--defence_window", "20"]
    serve.main(["--model", str(folder), *flags, "--defence_calibration", str(calibration), "--calibrate_only",
                "--save_defence"])
    assert "calibrated now on" in capsys.readouterr().err
    record = json.loads((folder / "config.json").read_text())["stream_defence"]
    settings = DefenceSettings(cap=3, depth=3, window=20)
    assert record["settings"] == asdict(settings)
    exit_layers = [expected_answer(texts, text, False)["exit_layer"] for text in calibration.read_text().split("\n")
                   if text]
    assert record["thresholds"] == derive_thresholds(exit_layers, settings).as_dict()
    assert record["calibrated_on"] == "clean.txt (40 texts)"
    # The same setting reads them back; another exit setting needs clean texts of its own.
    startup = serve.prepare(serve.parse_args(["--model", str(folder), *flags]))
    assert "saved in" in capsys.readouterr().err
    assert startup.setup.thresholds.as_dict() == record["thresholds"]
    startup = serve.prepare(serve.parse_args(["--model", str(folder), "--patience", "2"]))
    assert startup.setup.defence is None and "stream defence off" in capsys.readouterr().err
    code, error = run_main(capsys, "--model", folder, "--patience", "2", "--stream_defence", "on")
    assert "needs clean exit layers" in code


@pytest.mark.parametrize("argv, message", [
    (["--model", "no/such/folder"], "no such folder"),
    (["--stream_defence", "on"], "needs clean exit layers"),
    (["--slowdown_guard", "0.5", "--defence_window", "50"], "slowdown guard"),
    (["--defence_cap", "6"], "caps nothing"),
    (["--max_exit_layer", "3", "--defence_cap", "3", "--stream_defence", "on"], "adds nothing"),
    (["--max_exit_layer", "9"], "more than the 6 layers"),
])
def test_startup_errors_are_one_line(model_folder, capsys, argv, message):
    argv = argv if "--model" in argv else ["--model", model_folder, *argv]
    code, _ = run_main(capsys, *argv)
    assert code.startswith("error: ") and message in code and "\n" not in code


@pytest.mark.parametrize("argv, message", [
    (["--exit_threshold", "0.5"], "name one"),
    (["--exit_criterion", "entropy"], "needs --exit_threshold"),
    (["--exit_confidence", "1.5"], "in [0, 1]"),
    (["--port", "80"], ">= 1024"),
    (["--batch_timeout", "40"], "shorter than --request_timeout"),
    (["--stream_defence", "off", "--save_defence"], "nothing to calibrate"),
])
def test_bad_flags_are_one_line(capsys, argv, message):
    code, error = run_main(capsys, "--model", "x", *argv)
    assert code == 2 and message in error and len(error.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------------------------
# An exported folder, stopped with requests in flight


def test_an_exported_folder_answers_as_classify_and_sigterm_answers_the_requests_in_flight(
        model_folder, texts, tmp_path):
    exported = export.export_model(model_folder, str(tmp_path / "onnx"))
    model, tokenizer = load_exported_model(exported)
    # A long batch wait keeps the requests in flight when the signal comes.
    server = Server("--model", exported, *SERVED_FLAGS, "--stream_defence", "off", "--batch_timeout", "2",
                    "--max_batch_size", "64")
    requests = [texts["shallow"][i : i + 2] + texts["deep"][i : i + 1] for i in range(6)]
    responses, sent = [None] * len(requests), [threading.Event() for _ in requests]

    def client(index):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        connection.request("POST", "/classify", json.dumps({"texts": requests[index]}))
        sent[index].set()
        response = connection.getresponse()
        responses[index] = (response.status, json.loads(response.read()))

    threads = [threading.Thread(target=client, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for event in sent:
        assert event.wait(timeout=30)
    time.sleep(0.5)  # the server has read them
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    returncode, output = server.process.wait(timeout=60), server.process.stdout.read()
    assert returncode == 0, output
    assert "Traceback" not in output
    for request, (status, body) in zip(requests, responses):
        assert status == 200
        expected = classify(model, tokenizer, [(text, None) for text in request], **SERVED)
        assert [(a["label_id"], a["probability"], a["exit_layer"]) for a in body["answers"]] == [
            (answer.label_id, pytest.approx(answer.value, abs=1e-6), answer.exit_layer) for answer in expected]
    with pytest.raises(OSError):
        server.request("GET", "/health", timeout=5)


# ---------------------------------------------------------------------------------------------------------------------
# benchmarks/benchmark_serve.py: what it counts in a stream


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_serve", REPO_ROOT / "benchmarks" / "benchmark_serve.py")
    module = importlib.util.module_from_spec(spec)  # benchmarks/ is not a package
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_counts_when_the_cap_engaged_and_lifted():
    benchmark = load_benchmark()
    capped = [False, False, False, True, True, True, True, False, False, False]
    exits = [2, 3, 6, 4, 4, 4, 3, 2, 6, 1]
    kinds = ["clean", "clean", "attack", "attack", "attack", "attack", "clean", "clean", "clean", "clean"]
    labels = [1, 0, 1, 1, 0, 0, 1, 1, 0, 1]
    answered = [1, 0, 0, 1, 0, 1, 1, 0, 0, 1]
    records = [{"answer": {"capped": c, "exit_layer": e, "label_id": a}} for c, e, a in zip(capped, exits, answered)]
    undefended = [2, 3, 6, 6, 5, 6, 3, 2, 6, 1]
    figures = benchmark.stream_figures(records, kinds, labels, undefended, 6, attack_span=(2, 6))
    assert figures["engaged_after"] == 1  # the attack's second request was the first capped
    assert figures["released_after"] == 1  # and the second after it, the first uncapped
    assert figures["engagements"] == 1 and figures["capped_requests"] == 4
    assert figures["clean_accuracy"] == 5 / 6
    assert figures["layer_speedup"] == 6 / np.mean(exits)
    assert figures["attack_phase_layer_speedup"] == 6 / 4.5
    assert figures["attack_phase_layer_speedup_undefended"] == 6 / np.mean(undefended[2:6])
    never = [{"answer": dict(record["answer"], capped=False)} for record in records]
    figures = benchmark.stream_figures(never, kinds, labels, undefended, 6, attack_span=(2, 6))
    assert figures["engaged_after"] is None and figures["released_after"] is None


def test_an_attacked_stream_holds_its_share_of_adversarial_texts_between_clean_ones():
    benchmark = load_benchmark()
    args = SimpleNamespace(stream_prefix=5, attack_length=20, stream_suffix=7)
    clean, adversarial = [f"clean {i}" for i in range(30)], [f"attack {i}" for i in range(10)]
    texts, kinds, picks = benchmark.attacked_stream(args, 0.25, clean, adversarial, random.Random(0))
    assert len(texts) == len(kinds) == len(picks) == 32
    assert kinds[:5] == ["clean"] * 5 and kinds[25:] == ["clean"] * 7 and kinds[5:25].count("attack") == 5
    for text, kind, pick in zip(texts, kinds, picks):
        assert text == (clean if kind == "clean" else adversarial)[pick]


def test_the_detection_bound_grows_as_the_attack_thins_out():
    benchmark = load_benchmark()
    clean, attacked = [1, 1, 2, 3, 6] * 20, [5, 6, 6, 6] * 25
    same = benchmark.detection_bound(clean, clean, 0.5, 1e-5, 6)
    assert same["divergence_nats_per_request"] == pytest.approx(0, abs=1e-12)
    bounds = [benchmark.detection_bound(clean, attacked, share, 1e-5, 6) for share in (0.25, 0.5, 1.0)]
    divergences = [bound["divergence_nats_per_request"] for bound in bounds]
    assert 0 < divergences[0] < divergences[1] < divergences[2]
    for bound in bounds:
        assert bound["requests_needed"] == pytest.approx(np.log(1e5) / bound["divergence_nats_per_request"])
