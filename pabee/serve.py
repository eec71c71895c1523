"""Serve a trained PABEE model over HTTP: concurrent requests batched into early exit, Prometheus metrics, and a
slowdown defence that caps depth only while the traffic looks like an attack.

    python -m pabee.serve --model output/demo                       # http://127.0.0.1:8000
    curl -s 127.0.0.1:8000/classify -d '{"texts": ["a gripping, funny film", "dull and far too long"]}'
    curl -s 127.0.0.1:8000/metrics
    python -m pabee.serve --model output/demo-onnx --port 8001     # a folder that python -m pabee.export wrote
    python -m pabee.serve --model output/demo --patience 1 --exit_confidence 0.75 --defence_cap 4
    python -m pabee.serve --model output/demo --calibrate_only --save_defence   # calibrate the defence, save it

Endpoints:
- POST /classify with {"texts": [...]} (a sentence pair is two texts with a tab between them) answers
  {"answers": [...]}, one per text in order: "label", "label_id", "probability" (a regression model: "score"),
  "exit_layer", and "capped" (whether the stream defence's cap was on). They are the answers `pabee.classify` gives,
  whatever the batch a request lands in. A bad request gets a 4xx and {"detail": "<one line>"}.
- GET /health (200 "ok" once the model is loaded), GET /metrics (Prometheus text), GET /info (the model, its exit
  setting, the limits and the defence's calibration).

The model answers with the exit setting saved with it, or with the exit flags `pabee.classify` takes, with the same
meaning. The HTTP server and the batching are LitServe's: each worker process loads the model and gathers up to
--max_batch_size concurrent requests, waiting at most --batch_timeout seconds, into one early-exit batch.

The stream defence (pabee.stream_defence) watches the exit layers of the last --defence_window texts; when more of
them run to the depth it watches than clean traffic would at the stated false-alarm rate, new texts run with the
depth cap --defence_cap, until the window looks clean again. Its thresholds come from the clean exit layers of a
calibration set under the served setting: the one `--save_defence` saved in the model's config.json, else the texts
of --defence_calibration, else the calibration.jsonl that run_glue_with_pabee.py records beside the model. With none
of these the server runs without it (and says so).

SIGTERM or Ctrl+C stops accepting connections, answers the requests already received, then exits.
"""

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from queue import Empty

import litserve
from litserve.loops import BatchedLoop

from .calibration import CALIBRATION_FILE
from .classify import (
    EXPORTED_SETTINGS_FILE,
    InputError,
    add_exit_flags,
    check_input_kind,
    classify,
    first_line,
    is_exported_folder,
    label_name,
    load_exported_model,
    load_model,
    read_inputs,
)
from .stream_defence import (
    DEFAULT_FALSE_ALARM_RATE,
    DEFAULT_WINDOW,
    DefenceSettings,
    Thresholds,
    WindowMonitor,
    default_cap,
    derive_thresholds,
)

# The exit flags, as pabee.classify takes them: a flag given overrides the saved setting (see docs/models.md).
EXIT_FLAGS = ("patience", "exit_criterion", "exit_threshold", "exit_confidence", "max_exit_layer", "slowdown_guard",
              "regression_threshold")
DEFENCE_KEY = "stream_defence"  # the defence's record in the model's config.json
CLASSIFY_PATH = "/classify"
DEFENCE_FLAGS = ("defence_cap", "defence_depth", "defence_window", "defence_false_alarm_rate", "defence_calibration")


# ---------------------------------------------------------------------------------------------------------------------
# Requests


class RequestError(Exception):
    """A bad request: its HTTP status and a one-line reason."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Limits:
    max_texts: int  # per request
    max_text_bytes: int  # per text, UTF-8

    @property
    def max_body_bytes(self):
        """The largest body worth reading: every text at its limit, each character escaped by JSON (\\uXXXX)."""
        return self.max_texts * (6 * self.max_text_bytes + 8) + 1024


def parse_classify_request(body, limits, config):
    """The (text, text_b or None) inputs of a POST /classify body, or a `RequestError` saying what is wrong."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(400, f"the body is not JSON: {first_line(error)}")
    if not isinstance(payload, dict) or "texts" not in payload:
        raise RequestError(400, 'the body must be a JSON object with "texts": a list of strings')
    texts = payload["texts"]
    if not isinstance(texts, list) or not texts:
        raise RequestError(400, '"texts" must be a non-empty list of strings')
    if len(texts) > limits.max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; at most {limits.max_texts}")
    for number, text in enumerate(texts, start=1):
        if not isinstance(text, str):
            raise RequestError(400, f"text {number} is not a string ({type(text).__name__})")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate (JSON's \ud800), which the tokenizer cannot take
            raise RequestError(400, f"text {number} is not valid Unicode (it holds a lone surrogate)")
        if size > limits.max_text_bytes:
            raise RequestError(413, f"text {number} has {size} bytes (UTF-8); at most {limits.max_text_bytes}")
        if not text.strip():
            raise RequestError(400, f"text {number} is blank")
    try:
        inputs = read_inputs(texts, "text {}")  # a tab splits a pair, as on pabee.classify's command line
        check_input_kind(inputs, config)
    except InputError as error:
        raise RequestError(400, str(error))
    return inputs


def answer_record(config, answer, capped):
    """One answer as the response gives it."""
    if answer.label_id is None:
        record = {"score": answer.value}
    else:
        record = {"label": label_name(config, answer.label_id), "label_id": answer.label_id,
                  "probability": answer.value}
    record.update(exit_layer=answer.exit_layer, capped=capped)
    if answer.guard_fired is not None:
        record["guard_fired"] = answer.guard_fired
    return record


# ---------------------------------------------------------------------------------------------------------------------
# Metrics: every process writes its own, in prometheus-client's multiprocess mode; GET /metrics adds them up.


@cache
def api_metrics():
    """What the HTTP side records (one set per process)."""
    from prometheus_client import Counter, Histogram

    return {
        "requests": Counter("pabee_requests", "POST /classify requests, by HTTP status", ["status"]),
        "latency": Histogram("pabee_request_latency_seconds", "Time from a POST /classify request to its answer"),
    }


@cache
def worker_metrics(num_layers):
    """What the model workers record (one set per process)."""
    from prometheus_client import Counter, Gauge, Histogram

    def sizes(largest):
        return [2**i for i in range(int(math.log2(largest)) + 1)] + [float("inf")]

    return {
        "batch_texts": Histogram("pabee_batch_texts", "Texts per batch the model ran", buckets=sizes(1024)),
        "batch_requests": Histogram("pabee_batch_requests", "Requests gathered into one batch", buckets=sizes(256)),
        "exit_layer": Histogram("pabee_exit_layer", "Exit layer of each text", buckets=list(range(1, num_layers + 1))),
        "capped": Counter("pabee_stream_defence_capped_texts", "Texts run under the stream defence's cap"),
        "engagements": Counter("pabee_stream_defence_engagements", "Times the stream defence's cap went on"),
        "engaged": Gauge("pabee_stream_defence_engaged", "1 while the stream defence's cap is on (any worker)",
                         multiprocess_mode="livemax"),
        "window_count": Gauge("pabee_stream_defence_window_count",
                              "Texts of the defence's window that ran to its depth (the largest over workers)",
                              multiprocess_mode="livemax"),
        "engage_at": Gauge("pabee_stream_defence_engage_at", "Window count at which the cap goes on",
                           multiprocess_mode="max"),
        "release_at": Gauge("pabee_stream_defence_release_at", "Window count at or below which the cap lifts",
                            multiprocess_mode="max"),
    }


def render_metrics():
    """Every process's metrics, in Prometheus' text format."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class ClassifyRequests:
    """
    ASGI middleware on POST /classify: reads and checks the body before it is queued for the model (a bad request
    gets its 4xx here and never reaches a batch), and records requests and latency. Other paths pass through.
    """

    def __init__(self, app, limits, config):
        self.app, self.limits, self.config = app, limits, config

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != CLASSIFY_PATH or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {}

        async def send_recording(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            body = await self.read_body(receive)
            if body is None:  # the client went away before sending it all: nobody to answer
                status["code"] = 499
                return
            parse_classify_request(body, self.limits, self.config)
        except RequestError as error:
            await self.refuse(send_recording, error)
        else:
            async def replay():
                return {"type": "http.request", "body": body, "more_body": False}

            # The body is JSON whatever the client called it (curl -d says a form, which LitServe would parse so).
            headers = [(name, value) for name, value in scope["headers"] if name != b"content-type"]
            scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
            await self.app(scope, replay, send_recording)
        finally:
            metrics = api_metrics()
            metrics["requests"].labels(str(status.get("code", 500))).inc()
            metrics["latency"].observe(time.perf_counter() - started)

    async def read_body(self, receive):
        """The whole body, or None when the client disconnects first; a RequestError past the size limit."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limits.max_body_bytes:
                raise RequestError(413, f"the body passed {self.limits.max_body_bytes} bytes")
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def refuse(send, error):
        body = json.dumps({"detail": error.reason}).encode()
        await send({"type": "http.response.start", "status": error.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------------------------------
# The model worker


@dataclass(frozen=True)
class ServingSetup:
    """Everything a worker process needs (it is pickled to each): plain values only."""

    model_path: str
    exit_flags: dict  # the exit flags given, passed to classify as they are; the others keep the saved setting
    batch_size: int
    max_seq_length: int | None
    threads: int | None
    defence: DefenceSettings | None = None
    thresholds: Thresholds | None = None


def load_for_serving(path, threads=None):
    """(model, tokenizer) of a torch folder or an exported ONNX folder; torch is imported for the first only."""
    if is_exported_folder(path):
        return load_exported_model(path)
    import torch

    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = load_model(path)
    if torch.cuda.is_available():
        model = model.cuda()
    return model, tokenizer


class HeldQueue:
    """A request queue that can wait for its next item without taking it (held until the next get)."""

    def __init__(self, queue):
        self.queue, self.held = queue, []

    def wait(self, timeout):
        """Block until an item is there (raises queue.Empty after `timeout` seconds)."""
        if not self.held:
            self.held.append(self.queue.get(timeout=timeout))

    def get(self, timeout=None):
        return self.held.pop() if self.held else self.queue.get(timeout=timeout)

    def get_nowait(self):
        return self.held.pop() if self.held else self.queue.get_nowait()


class WaitingBatchedLoop(BatchedLoop):
    """
    LitServe's batched loop, except that an idle worker blocks until a request comes, and only then gathers the batch
    (up to max_batch_size requests, for at most batch_timeout seconds from that first one). LitServe's own loop polls
    the queue every millisecond while it waits, which keeps an idle server busy about a sixth of a CPU core.
    """

    def run_batched_loop(self, lit_api, request_queue, transport, callback_runner, lit_spec=None):
        return super().run_batched_loop(lit_api, HeldQueue(request_queue), transport, callback_runner, lit_spec)

    def get_batch_requests(self, lit_api, request_queue, transport):
        try:
            request_queue.wait(timeout=1.0)
        except Empty:
            return [], []
        return super().get_batch_requests(lit_api, request_queue, transport)


class PabeeAPI(litserve.LitAPI):
    """LitServe's model side: each worker process loads the model once and answers batches of requests."""

    def __init__(self, setup, max_batch_size, batch_timeout):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=CLASSIFY_PATH,
                         loop=WaitingBatchedLoop())  # batched at any max_batch_size: predict takes a list
        self.serving = setup

    def setup(self, device):
        # Ctrl+C reaches every process of the terminal's group: the main process stops the server in order (the
        # requests already received are answered first), so a worker must not die on it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.model, self.tokenizer = load_for_serving(self.serving.model_path, self.serving.threads)
        self.config = self.model.config
        self.metrics = worker_metrics(self.config.num_hidden_layers)
        self.monitor = None
        if self.serving.defence is not None:
            defence, thresholds = self.serving.defence, self.serving.thresholds
            self.monitor = WindowMonitor(defence.depth, defence.window, thresholds.engage_at, thresholds.release_at)
            self.metrics["engage_at"].set(thresholds.engage_at)
            self.metrics["release_at"].set(thresholds.release_at)
            self.metrics["engaged"].set(0)

    def decode_request(self, request):
        return read_inputs(request["texts"], "text {}")  # checked already (ClassifyRequests): (text, text_b or None)

    def predict(self, requests):
        """One list of answers per request, from one early-exit run over all their texts."""
        capped = self.monitor is not None and self.monitor.engaged
        flags = dict(self.serving.exit_flags)
        if capped:
            flags["max_exit_layer"] = self.serving.defence.cap
        inputs = [text for request in requests for text in request]
        answers = [None] * len(inputs)
        # Single texts and pairs run apart (requests of either kind may share a batch where the model takes both).
        for pairs in (False, True):
            positions = [i for i, (_, text_b) in enumerate(inputs) if (text_b is not None) == pairs]
            if positions:
                kind_answers = classify(self.model, self.tokenizer, [inputs[i] for i in positions],
                                        batch_size=self.serving.batch_size, max_length=self.serving.max_seq_length,
                                        **flags)
                for i, answer in zip(positions, kind_answers):
                    answers[i] = answer
        self.record(requests, answers, capped)
        records = [answer_record(self.config, answer, capped) for answer in answers]
        outputs, start = [], 0
        for request in requests:
            outputs.append(records[start : start + len(request)])
            start += len(request)
        return outputs

    def record(self, requests, answers, capped):
        """Metrics, and the defence's window, in the order the texts came."""
        self.metrics["batch_requests"].observe(len(requests))
        self.metrics["batch_texts"].observe(len(answers))
        if capped:
            self.metrics["capped"].inc(len(answers))
        for answer in answers:
            self.metrics["exit_layer"].observe(answer.exit_layer)
            if self.monitor is not None and self.monitor.observe(answer.exit_layer) and self.monitor.engaged:
                self.metrics["engagements"].inc()
        if self.monitor is not None:
            self.metrics["engaged"].set(int(self.monitor.engaged))
            self.metrics["window_count"].set(self.monitor.count)

    def encode_response(self, output):
        return {"answers": output}


# ---------------------------------------------------------------------------------------------------------------------
# The server: LitServe's, stopped in order


class DrainingServer(litserve.LitServer):
    """
    LitServe's server, stopped in order. LitServe's own shutdown closes the channel that brings the answers back
    before it stops the HTTP processes, so requests in flight would be lost; here the HTTP processes are stopped
    first (uvicorn then accepts no new connection and finishes the requests it has, within `uvicorn_graceful_timeout`
    seconds) while the model workers still answer, and only then the rest.
    """

    _stopping = False

    def _perform_graceful_shutdown(self, manager, uvicorn_workers, shutdown_reason="normal"):
        if self._stopping:  # LitServe's worker monitor may ask too
            return
        self._stopping = True
        for process in uvicorn_workers.values():
            process.terminate()  # SIGTERM: uvicorn's graceful shutdown
        for process in uvicorn_workers.values():
            process.join(timeout=self.uvicorn_graceful_timeout)
            if process.is_alive():
                process.kill()
        for thread in threading.enumerate():  # the worker monitor reads the shutdown event, set by now
            if thread.name == "litserve-monitoring":
                thread.join(timeout=self.monitor_internal + 1)
        super()._perform_graceful_shutdown(manager, {}, shutdown_reason)

    def stop_on_signals(self):
        """SIGTERM and SIGINT stop the server in order (`run` returns once it has)."""

        main_process = os.getpid()

        def stop(signum, frame):
            if os.getpid() != main_process:  # a process forked from this one (LitServe's manager): it is stopped last
                return
            if self._shutdown_event is None:  # still starting: nothing in flight
                raise KeyboardInterrupt
            # Set from another thread: the main thread is waiting on the same event through the manager's
            # connection, which a call from inside this handler would share.
            threading.Thread(target=self._shutdown_event.set, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)


# ---------------------------------------------------------------------------------------------------------------------
# Startup: the model, the exit flags, the defence's calibration


def read_config_json(folder):
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {folder}/config.json: {first_line(error)}")


def engine_of(folder):
    """(engine, precision): torch fp32, or ONNX Runtime at the precision the folder was exported in."""
    if not is_exported_folder(folder):
        return "torch", "fp32"
    try:
        with open(os.path.join(folder, EXPORTED_SETTINGS_FILE), encoding="utf-8") as file:
            return "onnx", json.load(file).get("precision", "fp32")
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read {folder}/{EXPORTED_SETTINGS_FILE}: {first_line(error)}")


def check_exit_flags(exit_flags, config, exported, model_path):
    """The checks on the exit flags that need the model (the others are in parse_args)."""
    num_layers = config.num_hidden_layers
    if exit_flags.get("max_exit_layer", 0) > num_layers:
        raise InputError(f"--max_exit_layer {exit_flags['max_exit_layer']} is more than the {num_layers} layers of "
                         f"the model in {model_path}")
    regression = config.num_labels == 1
    for name in ("exit_confidence", "slowdown_guard"):
        if exit_flags.get(name) and regression:
            raise InputError(f"--{name} reads class probabilities; the model in {model_path} is a regression model")
    if exported and exit_flags.get("slowdown_guard") is not None:
        raise InputError(f"--slowdown_guard runs in the torch model only; {model_path} is an exported folder: serve "
                         "the folder it was exported from, or use --max_exit_layer alone")


def served_with(args, saved_config, precision):
    """
    What the defence's thresholds depend on besides its own settings: the exit setting and the precision (an fp32
    export exits where the torch model does, so a calibration saved before `pabee.export` holds for its folder).
    """
    return {
        "exit_flags": exit_flags_of(args),
        "saved_setting": {name: saved_config.get(name) for name in EXIT_FLAGS},
        "precision": precision,
        "max_seq_length": args.max_seq_length,
    }


def read_clean_texts(path):
    """Calibration inputs: calibration.jsonl as run_glue_with_pabee.py records it, or one text (or pair) a line."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the defence's calibration file {path}: {first_line(error)}")
    if not path.endswith(".jsonl"):
        inputs = read_inputs(lines, f"{path}, line {{}}")
    else:
        inputs = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                inputs.append((record["sentence"], None) if "sentence" in record else
                              (record["sentence1"], record["sentence2"]))
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{path}, line {number}: expected a JSON object with \"sentence\" (or \"sentence1\" "
                                 "and \"sentence2\"), as run_glue_with_pabee.py records calibration sets")
    if not inputs:
        raise InputError(f"the defence's calibration file {path} holds no texts")
    return inputs


def defence_settings(args, saved_record, num_layers, static_cap):
    """The defence's settings: the flags given, else the saved ones, else the defaults."""
    saved = (saved_record or {}).get("settings", {})
    cap = args.defence_cap or saved.get("cap") or default_cap(num_layers)
    if static_cap is not None and not args.defence_cap:
        cap = min(cap, static_cap - 1)
    values = {"cap": cap, "depth": args.defence_depth or saved.get("depth") or cap}
    for name in ("window", "false_alarm_rate"):
        given = getattr(args, f"defence_{name}")
        values[name] = given if given is not None else saved.get(name, getattr(DefenceSettings, name))
    for name in ("confidence", "release_level"):
        values[name] = saved.get(name, getattr(DefenceSettings, name))
    settings = DefenceSettings(**values)
    try:
        settings.check(num_layers)
    except ValueError as error:
        raise InputError(str(error))
    if static_cap is not None and settings.cap >= static_cap:
        raise InputError(f"the defence's cap {settings.cap} adds nothing to the cap of {static_cap} every input "
                         "already runs under (--max_exit_layer or the saved one): give a lower --defence_cap")
    return settings


def calibration_source(args):
    """The clean texts to calibrate on, and where they come from; None when there are none."""
    if args.defence_calibration:
        return args.defence_calibration
    recorded = os.path.join(args.model, CALIBRATION_FILE)
    return recorded if os.path.isfile(recorded) else None


def prepare_defence(args, model, tokenizer, saved_config, precision):
    """
    (the defence's settings, thresholds and record, or None where it is off; a line saying where the thresholds come
    from, or why the defence is off). The saved thresholds serve when they were calibrated with the same settings,
    exit setting and engine; otherwise they are derived here from the exit layers of clean texts.
    """
    if args.stream_defence == "off":
        return None, None
    config = model.config
    exit_flags = exit_flags_of(args)
    asked = args.stream_defence == "on" or args.save_defence or args.calibrate_only or any(
        getattr(args, name) is not None for name in DEFENCE_FLAGS)
    if exit_flags.get("slowdown_guard", saved_config.get("slowdown_guard")) is not None:
        if asked:
            raise InputError("the stream defence caps every input while it is on, but under the slowdown guard "
                             "the cap holds only the inputs the guard flags: serve with --stream_defence off, or "
                             "without the guard (save the model with config.slowdown_guard = None)")
        return None, "stream defence off: the model holds inputs to its cap with its slowdown guard"
    saved_record = saved_config.get(DEFENCE_KEY)
    static_cap = exit_flags.get("max_exit_layer", saved_config.get("max_exit_layer"))
    settings = defence_settings(args, saved_record, config.num_hidden_layers, static_cap)
    context = served_with(args, saved_config, precision)
    if (saved_record and not args.defence_calibration and saved_record.get("settings") == asdict(settings)
            and saved_record.get("served_with") == context):
        thresholds = Thresholds(**saved_record["thresholds"])
        return (settings, thresholds, saved_record), (f"calibrated on {saved_record['calibrated_on']}, saved in "
                                                      f"{args.model}/config.json")
    source = calibration_source(args)
    if source is None:
        if asked:
            raise InputError(f"the stream defence needs clean exit layers to set its thresholds: {args.model} has "
                             f"no {CALIBRATION_FILE} and no saved calibration for this setting; give "
                             "--defence_calibration FILE (clean texts, e.g. dev reviews), or --stream_defence off")
        return None, (f"stream defence off: {args.model} has no {CALIBRATION_FILE} and no saved calibration for this "
                      "setting (--defence_calibration FILE of clean texts turns it on)")
    inputs = read_clean_texts(source)
    check_input_kind(inputs, config)
    answers = classify(model, tokenizer, inputs, batch_size=args.batch_size, max_length=args.max_seq_length,
                       **exit_flags)
    try:
        thresholds = derive_thresholds([answer.exit_layer for answer in answers], settings)
    except ValueError as error:
        raise InputError(f"stream defence: {error}")
    record = {"settings": asdict(settings), "thresholds": thresholds.as_dict(), "served_with": context,
              "calibrated_on": f"{os.path.basename(source)} ({len(inputs)} texts)"}
    return (settings, thresholds, record), f"calibrated now on {source}"


def save_defence_record(folder, record):
    """Write the defence's record into the folder's config.json (a temporary file, then renamed)."""
    config = read_config_json(folder)
    config[DEFENCE_KEY] = record
    path = os.path.join(folder, "config.json")
    partial = f"{path}.partial-{os.getpid()}"
    with open(partial, "w", encoding="utf-8") as file:
        file.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def describe_defence(settings, thresholds):
    return (f"stream defence: the cap of {settings.cap} layers goes on when {thresholds.engage_at} of the last "
            f"{settings.window} texts ran to layer {settings.depth} or deeper, and lifts at {thresholds.release_at} "
            f"or fewer (clean: {thresholds.clean_share:.1%} of {thresholds.calibration_examples} calibration texts, "
            f"up to {thresholds.clean_share_bound:.1%} at confidence {settings.confidence:g}; false alarms: at most "
            f"{settings.false_alarm_rate:g} per clean text)")


def exit_flags_of(args):
    """The exit flags given on the command line (the others keep the model's saved setting)."""
    return {name: getattr(args, name) for name in EXIT_FLAGS if getattr(args, name) is not None}


@dataclass
class Startup:
    """What main prepares before serving."""

    setup: ServingSetup
    config: object
    limits: Limits
    metadata: dict = field(default_factory=dict)


def prepare(args):
    """Load and check the model and the flags, calibrate the defence; InputError with one line on any problem."""
    if not os.path.isdir(args.model):
        raise InputError(f"--model {args.model}: no such folder")
    saved_config = read_config_json(args.model)
    engine, precision = engine_of(args.model)
    model, tokenizer = load_for_serving(args.model, args.threads)
    config = model.config
    exit_flags = exit_flags_of(args)
    check_exit_flags(exit_flags, config, engine == "onnx", args.model)
    try:  # the exit flags, checked by the code that runs them
        classify(model, tokenizer, [("a", None) if not needs_pairs(config) else ("a", "b")], **exit_flags)
    except (ValueError, TypeError) as error:
        raise InputError(f"the exit flags: {first_line(error)}")
    found, line = prepare_defence(args, model, tokenizer, saved_config, precision)
    defence, thresholds, record = found or (None, None, None)
    if defence is not None:
        line = f"{describe_defence(defence, thresholds)}; {line}"
    if line:
        print(line, file=sys.stderr, flush=True)
    if args.save_defence:
        if record is None:
            raise InputError("--save_defence: the stream defence is off, so there is nothing to save")
        save_defence_record(args.model, record)
        print(f"Saved the stream defence's calibration in {args.model}/config.json", file=sys.stderr, flush=True)
    setup = ServingSetup(args.model, exit_flags, args.batch_size, args.max_seq_length, args.threads, defence,
                         thresholds)
    limits = Limits(args.max_texts, args.max_text_bytes)
    metadata = {"model": os.path.abspath(args.model), "engine": f"{engine} {precision}",
                "num_layers": config.num_hidden_layers,
                "exit_flags": exit_flags, "saved_setting": {name: saved_config.get(name) for name in EXIT_FLAGS},
                "limits": asdict(limits), DEFENCE_KEY: record}
    return Startup(setup, config, limits, metadata)


def needs_pairs(config):
    from .glue import finetuned_task, is_sentence_pair_task

    task = finetuned_task(config)
    return task is not None and is_sentence_pair_task(task)


# ---------------------------------------------------------------------------------------------------------------------
# python -m pabee.serve


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pabee.serve", description=__doc__.split("\n\n")[0])
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")  # one line, without the usage
    parser.add_argument("--model", required=True,
                        help="Folder of a trained PABEE model (e.g. output/demo), or a folder that python -m "
                             "pabee.export wrote from one (runs on onnxruntime, without torch).")
    parser.add_argument("--host", default="127.0.0.1", choices=("127.0.0.1", "0.0.0.0", "::"),
                        help="Address to listen on: 127.0.0.1 (this machine only), or 0.0.0.0 / :: (every "
                             "interface).")
    parser.add_argument("--port", type=int, default=8000, help="Port to listen on (1024 to 65535).")

    exits = parser.add_argument_group(
        "exit setting (as pabee.classify takes it)",
        "Giving any of --patience, --exit_criterion, --exit_threshold, --exit_confidence gives a whole exit rule (the "
        "others at their defaults: patience 0, criterion patience, no threshold, confidence 0); with none of them the "
        "saved rule runs. --max_exit_layer, --slowdown_guard and --regression_threshold keep their saved values "
        "unless given. --max_exit_layer caps every input (a fixed defence; the stream defence's cap is "
        "--defence_cap).")
    add_exit_flags(exits, regression_threshold=True)

    serving = parser.add_argument_group("batching and limits")
    serving.add_argument("--max_batch_size", type=int, default=32,
                         help="Concurrent requests gathered into one batch by each worker.")
    serving.add_argument("--batch_timeout", type=float, default=0.005,
                         help="Seconds a worker waits for a batch to fill before it runs what it has.")
    serving.add_argument("--batch_size", type=int, default=32,
                         help="Texts per model call (a batch of requests with more texts runs in several); the "
                              "answers are the same at any batch size.")
    serving.add_argument("--workers", type=int, default=1,
                         help="Model worker processes, each with its own copy of the model (and its own stream "
                              "defence window).")
    serving.add_argument("--threads", type=int, default=None,
                         help="torch threads per worker. Default: torch's (the cores).")
    serving.add_argument("--max_texts", type=int, default=64, help="Most texts in one request (more: 413).")
    serving.add_argument("--max_text_bytes", type=int, default=4096,
                         help="Longest text in UTF-8 bytes (longer: 413); the model reads at most --max_seq_length "
                              "tokens of it.")
    serving.add_argument("--max_seq_length", type=int, default=None,
                         help="Longer inputs are truncated to this many tokens. Default: the model's maximum.")
    serving.add_argument("--request_timeout", type=float, default=30,
                         help="Seconds a request may wait for a worker before it gets a 504 (0: no limit).")
    serving.add_argument("--drain_timeout", type=float, default=30,
                         help="On SIGTERM or Ctrl+C, seconds given to the requests in flight to finish.")
    serving.add_argument("--log_level", default="warning", choices=("debug", "info", "warning", "error"),
                         help="Server log level (LitServe and uvicorn).")

    defence = parser.add_argument_group("stream defence (see pabee.stream_defence)")
    defence.add_argument("--stream_defence", choices=("on", "off"), default=None,
                         help="on: required (an error without clean exit layers to calibrate on); off: never. "
                              "Default: on where the model has a saved calibration or a calibration.jsonl, or "
                              "--defence_calibration is given.")
    defence.add_argument("--defence_cap", type=int, default=None,
                         help="Depth cap applied while the defence is engaged. Default: the saved one, else two "
                              "thirds of the layers (4 of 6).")
    defence.add_argument("--defence_depth", type=int, default=None,
                         help="The window counts texts that ran to this layer or deeper; at most the cap, so that "
                              "capped texts still show it. Default: the saved one, else the cap.")
    defence.add_argument("--defence_window", type=int, default=None,
                         help=f"Texts in the sliding window. Default: the saved one, else {DEFAULT_WINDOW}.")
    defence.add_argument("--defence_false_alarm_rate", type=float, default=None,
                         help="False alarms per clean text, at most, on average (over N clean texts, the chance of "
                              "any is at most N times this). Default: the saved one, else "
                              f"{DEFAULT_FALSE_ALARM_RATE:g}.")
    defence.add_argument("--defence_calibration", default=None, metavar="FILE",
                         help="Clean texts to calibrate the defence on, run with the served setting: a "
                              "calibration.jsonl as run_glue_with_pabee.py records it, or one text (or tab-separated "
                              "pair) a line. Default: the saved calibration, else MODEL/calibration.jsonl.")
    defence.add_argument("--save_defence", action="store_true",
                         help="Save the defence's settings and calibration in MODEL/config.json, where later runs "
                              "find them (and fp32 exports of the folder made after).")
    defence.add_argument("--calibrate_only", action="store_true",
                         help="Calibrate the defence (and save it with --save_defence), then exit without serving.")
    args = parser.parse_args(argv)
    at_least = {"port": 1024, "max_batch_size": 1, "batch_size": 1, "workers": 1, "max_texts": 1,
                "max_text_bytes": 1, "patience": 0, "max_exit_layer": 1, "threads": 1, "max_seq_length": 2,
                "defence_cap": 1, "defence_depth": 1, "defence_window": 1}
    for name, smallest in at_least.items():
        value = getattr(args, name)
        if value is not None and value < smallest:
            parser.error(f"--{name} must be >= {smallest}, got {value}")
    if args.port > 65535:
        parser.error(f"--port must be <= 65535, got {args.port}")
    for name in ("exit_confidence", "slowdown_guard"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= 1:  # NaN fails both
            parser.error(f"--{name} must be in [0, 1], got {value}")
    for name in ("batch_timeout", "request_timeout", "drain_timeout", "exit_threshold", "regression_threshold"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            parser.error(f"--{name} must be >= 0, got {value}")
    if args.request_timeout and args.batch_timeout >= args.request_timeout:
        parser.error(f"--batch_timeout {args.batch_timeout:g} must be shorter than --request_timeout "
                     f"{args.request_timeout:g}")
    if args.defence_false_alarm_rate is not None and not 0 < args.defence_false_alarm_rate < 1:
        parser.error(f"--defence_false_alarm_rate must be in (0, 1), got {args.defence_false_alarm_rate}")
    if args.exit_criterion in ("entropy", "confidence") and args.exit_threshold is None:
        parser.error(f"--exit_criterion {args.exit_criterion} needs --exit_threshold")
    if args.exit_threshold is not None and args.exit_criterion not in ("entropy", "confidence"):
        parser.error("--exit_threshold is the threshold of --exit_criterion entropy or confidence: name one")
    if args.stream_defence == "off" and (args.save_defence or args.defence_calibration):
        parser.error("--stream_defence off leaves nothing to calibrate or save")
    if args.calibrate_only and args.stream_defence == "off":
        parser.error("--calibrate_only calibrates the stream defence: leave out --stream_defence off")
    return args


def serve(startup, args):
    """Run the server until SIGTERM or Ctrl+C; the requests already received are answered first."""
    api = PabeeAPI(startup.setup, args.max_batch_size, args.batch_timeout)
    server = DrainingServer(api, accelerator="cpu", workers_per_device=args.workers, timeout=args.request_timeout,
                            model_metadata=startup.metadata, disable_openapi_url=True,
                            middlewares=[(ClassifyRequests, {"limits": startup.limits, "config": startup.config})])
    server.uvicorn_graceful_timeout = args.drain_timeout

    async def metrics_endpoint():
        from fastapi import Response

        body, content_type = render_metrics()
        return Response(content=body, media_type=content_type)

    server.app.add_api_route("/metrics", metrics_endpoint, methods=["GET"])
    server.stop_on_signals()
    print(f"Serving {args.model} on http://{args.host}:{args.port} (POST {CLASSIFY_PATH}, GET /health, /metrics, "
          "/info) once its workers are up", file=sys.stderr, flush=True)
    server.run(host=args.host, port=args.port, num_api_servers=1, log_level=args.log_level,
               generate_client_file=False, access_log=False)


def main(argv=None):
    args = parse_args(argv)
    # Each process of the server (HTTP and model workers) writes its metrics here; set before prometheus_client loads.
    metrics_dir = tempfile.mkdtemp(prefix="pabee-serve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        try:
            startup = prepare(args)
        except InputError as error:
            raise SystemExit(f"error: {error}") from None
        if not args.calibrate_only:
            serve(startup, args)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
