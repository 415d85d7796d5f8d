"""End-to-end test of a running `ollamamax serve` with the real clients: the official `ollama` Python package and
the `openai` package, plus raw HTTP (httpx) where the shape of the wire matters more than what a client keeps.

Run by scripts/e2e.sh, which starts the server. Inputs (environment):
  OLLAMA_HOST        http://127.0.0.1:PORT of the server under test
  OLLAMAMAX_MODEL    the GGUF to upload (SmolLM2-135M-Instruct Q4_1)
  E2E_MODELS_DIR     the server's OLLAMA_MODELS (checked on disk after create, delete and pull)
  E2E_WORK_DIR       a scratch directory (the local registry is laid out there)

E2E_ONLY=step,step runs only those steps (for debugging; later steps need what earlier ones made).
Every step runs even when an earlier one failed (later steps may then fail too: read the first failure first).
Ends with the line "N passed, N failed" and exits non-zero on any failure.
"""

import base64
import datetime
import functools
import hashlib
import http.server
import json
import math
import os
import re
import shutil
import socket
import struct
import sys
import threading
import traceback

import httpx
import jsonschema
import ollama
import openai

HOST = os.environ["OLLAMA_HOST"].rstrip("/")
GGUF = os.environ["OLLAMAMAX_MODEL"]
MODELS_DIR = os.environ.get("E2E_MODELS_DIR")
WORK_DIR = os.environ["E2E_WORK_DIR"]

MODEL = "smollm2"
MODEL_TAG = "smollm2:latest"
EMBEDDING_LENGTH = 576  # SmolLM2-135M's hidden size
GREEDY = {"temperature": 0, "num_predict": 8, "seed": 42}
TIMEOUT = 600.0

client = ollama.Client(host=HOST, timeout=TIMEOUT)
raw = httpx.Client(base_url=HOST, timeout=TIMEOUT)
oai = openai.OpenAI(base_url=HOST + "/v1", api_key="ollama", timeout=TIMEOUT, max_retries=0)

RESULTS = []  # (name, ok, detail)
STATE = {}  # what later steps need from earlier ones


def step(function):
    """Registers a step; a failing step records its traceback and the run goes on."""

    @functools.wraps(function)
    def run():
        try:
            function()
        except Exception:  # noqa: BLE001 - every failure is a test result
            RESULTS.append((function.__name__, False, traceback.format_exc()))
            print(f"FAIL {function.__name__}\n{traceback.format_exc()}", flush=True)
        else:
            RESULTS.append((function.__name__, True, ""))
            print(f"ok   {function.__name__}", flush=True)

    STEPS.append(run)
    return run


STEPS = []


# ---------------------------------------------------------------------------------------------------------------
# Shape checks


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_timestamp(value, what):
    assert isinstance(value, str), f"{what}: {value!r} is not a string"
    # RFC 3339 with optional fractional seconds (Go writes up to 9 digits; Python parses up to 6).
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", value)
    assert match, f"{what}: {value!r} is not RFC 3339"
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.datetime.fromisoformat(match.group(1) + zone)


def check_digest_hex(value, what):
    assert isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value), f"{what}: {value!r}"


def check_details(details, what):
    assert isinstance(details, dict), f"{what}: details {details!r}"
    assert details.get("format") == "gguf", f"{what}: format {details.get('format')!r}"
    assert details.get("family") == "llama", f"{what}: family {details.get('family')!r}"
    families = details.get("families")
    assert families is None or (isinstance(families, list) and "llama" in families), f"{what}: families {families!r}"
    size = details.get("parameter_size")
    assert isinstance(size, str) and re.fullmatch(r"\d+(\.\d+)?[KMBT]", size), f"{what}: parameter_size {size!r}"
    assert size.startswith("13") and size.endswith("M"), f"{what}: parameter_size {size!r} (SmolLM2 has ~135M)"
    assert details.get("quantization_level") == "Q4_1", f"{what}: quantization_level {details.get('quantization_level')!r}"
    assert "parent_model" in details, f"{what}: details lack parent_model: {details!r}"


def check_final(chunk, what, max_eval=None, generate=False):
    """The fields of the last chunk of /api/generate or /api/chat."""
    assert chunk["done"] is True, f"{what}: done {chunk.get('done')!r}"
    assert chunk["done_reason"] in ("stop", "length"), f"{what}: done_reason {chunk.get('done_reason')!r}"
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"):
        assert is_int(chunk.get(key)), f"{what}: {key} {chunk.get(key)!r}"
        assert chunk[key] >= 0, f"{what}: {key} {chunk[key]}"
    assert chunk["total_duration"] > 0 and chunk["eval_duration"] > 0, f"{what}: durations {chunk}"
    assert chunk["total_duration"] >= chunk["eval_duration"], f"{what}: total < eval duration: {chunk}"
    assert chunk["prompt_eval_count"] > 0, f"{what}: prompt_eval_count {chunk['prompt_eval_count']}"
    assert chunk["eval_count"] > 0, f"{what}: eval_count {chunk['eval_count']}"
    if max_eval is not None:
        assert chunk["eval_count"] <= max_eval, f"{what}: eval_count {chunk['eval_count']} > num_predict {max_eval}"
    check_timestamp(chunk.get("created_at"), f"{what}: created_at")
    assert chunk.get("model") == MODEL_TAG or chunk.get("model") == MODEL, f"{what}: model {chunk.get('model')!r}"
    if generate:
        context = chunk.get("context")
        assert isinstance(context, list) and context and all(is_int(t) for t in context), f"{what}: context {context!r}"


def ndjson(response):
    assert response.status_code == 200, f"{response.status_code}: {response.text}"
    kind = response.headers.get("content-type", "")
    assert kind.startswith("application/x-ndjson"), f"streamed content-type {kind!r}"
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def openai_message(error):
    """The message of an OpenAI-shaped error body {"error": {"message", "type", ...}} (the client may keep either
    level)."""
    body = error.body if isinstance(error.body, dict) else {}
    inner = body.get("error", body)
    assert isinstance(inner, dict) and "type" in inner, f"not OpenAI's error shape: {error.body!r}"
    return inner.get("message")


def norm(vector):
    return math.sqrt(sum(x * x for x in vector))


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / (norm(a) * norm(b))


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expect_response_error(status, call, *args, **kwargs):
    try:
        result = call(*args, **kwargs)
        if hasattr(result, "__next__"):
            list(result)
    except ollama.ResponseError as error:
        wanted = status if isinstance(status, tuple) else (status,)
        assert error.status_code in wanted, f"status {error.status_code} (wanted {status}): {error.error}"
        assert isinstance(error.error, str) and error.error, f"empty error: {error!r}"
        return error.error
    raise AssertionError(f"{call.__name__}{args} succeeded; wanted HTTP {status}")


# ---------------------------------------------------------------------------------------------------------------
# Server basics, blobs, create


@step
def root_and_version():
    r = raw.get("/")
    assert r.status_code == 200 and r.text == "Ollama is running", (r.status_code, r.text)
    assert raw.head("/").status_code == 200
    r = raw.get("/api/version")
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["version"], body
    assert re.fullmatch(r"\d+\.\d+\.\d+(-\S+)?", body["version"]), body
    assert raw.head("/api/version").status_code == 200
    r = raw.get("/api/nonexistent")
    assert r.status_code == 404, r.status_code


@step
def upload_blob():
    digest = "sha256:" + sha256_file(GGUF)
    assert raw.head(f"/api/blobs/{digest}").status_code == 404, "blob present before the upload"
    uploaded = client.create_blob(GGUF)
    assert uploaded == digest, (uploaded, digest)
    assert raw.head(f"/api/blobs/{digest}").status_code == 200, "blob missing after the upload"
    # Uploading again is fine (ollama create does it when unsure).
    with open(GGUF, "rb") as f:
        r = raw.post(f"/api/blobs/{digest}", content=f)
    assert r.status_code in (200, 201), r.status_code
    if MODELS_DIR:
        path = os.path.join(MODELS_DIR, "blobs", digest.replace(":", "-"))
        assert os.path.getsize(path) == os.path.getsize(GGUF), "stored blob has the wrong size"
    STATE["digest"] = digest


@step
def create_from_blob():
    progress = list(client.create(model=MODEL, files={"model.gguf": STATE["digest"]}, stream=True))
    statuses = [p.status for p in progress]
    assert statuses, "no progress"
    assert all(isinstance(s, str) and s for s in statuses), statuses
    assert statuses[-1] == "success", statuses
    # Not streamed: one object.
    done = client.create(
        model="smollm2-tuned",
        from_=MODEL,
        system="You are terse.",
        parameters={"temperature": 0, "num_predict": 8, "stop": ["<|im_end|>", "\n\n"]},
        stream=False,
    )
    assert done.status == "success", done
    r = raw.post("/api/create", json={"model": "smollm2-raw", "files": {"model.gguf": STATE["digest"]}, "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
    if MODELS_DIR:
        manifest = os.path.join(MODELS_DIR, "manifests", "registry.ollama.ai", "library", MODEL, "latest")
        with open(manifest) as f:
            body = json.load(f)
        assert body["schemaVersion"] == 2, body
        layers = {layer["mediaType"]: layer for layer in body["layers"]}
        model_layer = layers["application/vnd.ollama.image.model"]
        assert model_layer["digest"] == STATE["digest"], body
        assert model_layer["size"] == os.path.getsize(GGUF), body
        config = body["config"]["digest"]
        assert os.path.isfile(os.path.join(MODELS_DIR, "blobs", config.replace(":", "-"))), "config blob missing"


@step
def create_errors():
    # A digest of a blob the server lacks, a server path instead of a digest, a base model that is not there.
    expect_response_error((400, 404), client.create, model="bad", files={"model.gguf": "sha256:" + "0" * 64})
    expect_response_error(400, client.create, model="bad", files={"model.gguf": "/etc/passwd"})
    expect_response_error((400, 404), client.create, model="bad", from_="no-such-model")
    assert "bad:latest" not in [m.model for m in client.list().models], "a failed create left a model"


# ---------------------------------------------------------------------------------------------------------------
# list, show


@step
def list_models():
    r = raw.get("/api/tags")
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["models"], body.keys()
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"smollm2:latest", "smollm2-tuned:latest", "smollm2-raw:latest"}, sorted(by_name)
    size = os.path.getsize(GGUF)
    for name, model in by_name.items():
        assert model["model"] == name, model
        check_timestamp(model["modified_at"], f"{name} modified_at")
        assert is_int(model["size"]) and size <= model["size"] < size + (1 << 20), (name, model["size"], size)
        check_digest_hex(model["digest"], f"{name} digest")
        check_details(model["details"], name)
    # Same GGUF and no extra layers: the same manifest, so the same digest.
    assert by_name["smollm2:latest"]["digest"] == by_name["smollm2-raw:latest"]["digest"], "equal manifests, other digests"
    assert by_name["smollm2:latest"]["digest"] != by_name["smollm2-tuned:latest"]["digest"], "tuned has more layers"
    # The client agrees.
    listed = client.list()
    assert sorted(m.model for m in listed.models) == sorted(by_name), listed
    for m in listed.models:
        assert m.size and m.digest and m.modified_at and m.details and m.details.format == "gguf", m
    STATE["manifest_digest"] = by_name["smollm2:latest"]["digest"]


@step
def show_model():
    r = raw.post("/api/show", json={"model": MODEL})
    assert r.status_code == 200, r.text
    body = r.json()
    for key in ("modelfile", "parameters", "template", "details", "model_info", "capabilities", "modified_at"):
        assert key in body, f"show lacks {key}: {sorted(body)}"
    assert isinstance(body["modelfile"], str) and "FROM " in body["modelfile"], body["modelfile"]
    assert isinstance(body["template"], str) and body["template"].strip(), body["template"]
    check_details(body["details"], "show")
    info = body["model_info"]
    assert info["general.architecture"] == "llama", info.get("general.architecture")
    assert info["llama.embedding_length"] == EMBEDDING_LENGTH, info.get("llama.embedding_length")
    assert is_int(info["llama.context_length"]) and info["llama.context_length"] >= 2048, info.get("llama.context_length")
    caps = body["capabilities"]
    assert isinstance(caps, list) and "completion" in caps, caps
    check_timestamp(body["modified_at"], "show modified_at")


@step
def show_model_info_counts():
    info = raw.post("/api/show", json={"model": MODEL}).json()["model_info"]
    assert is_int(info.get("general.parameter_count")), f"no general.parameter_count in {sorted(info)}"
    assert 100_000_000 < info["general.parameter_count"] < 200_000_000, info["general.parameter_count"]
    assert info.get("llama.block_count") == 30, info.get("llama.block_count")
    assert info.get("llama.attention.head_count") == 9, info.get("llama.attention.head_count")


@step
def show_verbose():
    """Without verbose, Ollama leaves out the tensors and empties the long arrays of model_info (the tokenizer's
    49,152 tokens and merges); verbose brings both."""
    body = raw.post("/api/show", json={"model": MODEL}).json()
    assert not body.get("tensors"), "tensors without verbose"
    long_arrays = {k: len(v) for k, v in body["model_info"].items() if isinstance(v, list) and len(v) > 5}
    assert not long_arrays, f"model_info without verbose holds long arrays: {long_arrays}"
    r = raw.post("/api/show", json={"model": MODEL, "verbose": True})
    assert r.status_code == 200, r.text
    verbose = r.json()
    assert len(verbose["model_info"].get("tokenizer.ggml.tokens") or []) == 49152, "verbose lacks the tokens"
    tensors = verbose.get("tensors")
    assert isinstance(tensors, list) and len(tensors) > 100, "verbose show lacks tensors"
    assert {"name", "type", "shape"} <= set(tensors[0]), tensors[0]


@step
def show_derived_model():
    tuned = client.show("smollm2-tuned")
    params = tuned.parameters or ""
    assert re.search(r"^temperature\s+0(\.0)?$", params, re.M), params  # Ollama prints 0
    assert re.search(r"^num_predict\s+8$", params, re.M), params
    assert re.search(r'^stop\s+"?<\|im_end\|>"?$', params, re.M), params
    assert "You are terse." in (tuned.modelfile or ""), tuned.modelfile
    assert tuned.modelinfo and tuned.modelinfo["general.architecture"] == "llama"
    assert tuned.capabilities and "completion" in tuned.capabilities
    expect_response_error(404, client.show, "no-such-model")


# ---------------------------------------------------------------------------------------------------------------
# generate, chat


@step
def generate_not_streamed():
    first = client.generate(model=MODEL, prompt="Why is the sky blue?", options=GREEDY)
    second = client.generate(model=MODEL, prompt="Why is the sky blue?", options=GREEDY)
    STATE["generate_text"] = first.response  # later steps compare with it even when a check below fails
    assert isinstance(first.response, str) and first.response.strip(), first.response
    assert first.response == second.response, ("greedy generation differs between runs", first.response, second.response)
    check_final(first.model_dump(), "generate", max_eval=8, generate=True)
    r = raw.post("/api/generate", json={"model": MODEL, "prompt": "Why is the sky blue?", "options": GREEDY, "stream": False})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    check_final(body, "raw generate", max_eval=8, generate=True)
    assert body["response"] == first.response


@step
def generate_streamed():
    chunks = list(client.generate(model=MODEL, prompt="Why is the sky blue?", options=GREEDY, stream=True))
    assert len(chunks) >= 2, chunks
    for chunk in chunks[:-1]:
        assert chunk.done is False and isinstance(chunk.response, str), chunk
        assert chunk.done_reason is None and chunk.eval_count is None, f"stats before the end: {chunk}"
    check_final(chunks[-1].model_dump(), "generate stream", max_eval=8, generate=True)
    text = "".join(c.response for c in chunks)
    assert text == STATE.get("generate_text"), ("streamed text differs from the unstreamed", text, STATE.get("generate_text"))
    lines = ndjson(raw.post("/api/generate", json={"model": MODEL, "prompt": "Why is the sky blue?", "options": GREEDY}))
    assert "".join(line["response"] for line in lines) == text
    assert lines[-1]["done"] is True and all(line["done"] is False for line in lines[:-1])


@step
def generate_stop_and_length():
    # num_predict bounds the answer and says "length".
    r = client.generate(model=MODEL, prompt="Count from one to one hundred.", options={"temperature": 0, "num_predict": 3})
    assert r.done_reason == "length" and 0 < r.eval_count <= 3, r
    # A stop sequence that occurs in the greedy answer ends it early, "stop", and is not in the text.
    text = STATE.get("generate_text", "")
    words = text.split()
    assert len(words) >= 2, text
    stop = words[1]
    r = client.generate(model=MODEL, prompt="Why is the sky blue?", options={**GREEDY, "stop": [stop]})
    assert r.done_reason == "stop", r
    assert stop not in r.response and text.startswith(r.response.rstrip()), (stop, r.response, text)
    # raw: no template, the prompt continues as is.
    r = client.generate(model=MODEL, prompt="The capital of France is", raw=True, options=GREEDY)
    assert r.response.strip(), r
    # system and suffix-free template override.
    r = client.generate(model=MODEL, prompt="hi", system="Answer in French.", options=GREEDY)
    assert r.response.strip(), r


@step
def eval_count_is_the_number_of_tokens_generated():
    """A "length" stop after num_predict N generated exactly N tokens, and eval_count says N (Ollama counts every
    generated token). The prompt asks for a long answer: SmolLM2 answers "Count from one to one hundred." with
    "One hundred." under one arithmetic and at length under the other, a near-tie this test must not hang on."""
    for n in (1, 3, 8):
        r = client.generate(model=MODEL, prompt="Write a long story about a dragon.", options={"temperature": 0, "num_predict": n})
        assert r.done_reason == "length", r.done_reason
        assert r.eval_count == n, f"num_predict {n}: eval_count {r.eval_count}, answer {r.response!r}"
    chunks = list(client.chat(model=MODEL, messages=[{"role": "user", "content": "Count to fifty."}], options={"temperature": 0, "num_predict": 5}, stream=True))
    pieces = [c for c in chunks[:-1] if c.message.content]
    assert chunks[-1].done_reason == "length" and chunks[-1].eval_count == 5, (chunks[-1].eval_count, len(pieces))


@step
def chat_not_streamed_and_streamed():
    messages = [{"role": "user", "content": "Say hello."}]
    full = client.chat(model=MODEL, messages=messages, options=GREEDY)
    STATE["chat_text"] = full.message.content
    check_final(full.model_dump(), "chat", max_eval=8)
    assert full.message.role == "assistant", full.message
    assert isinstance(full.message.content, str) and full.message.content.strip(), full.message
    chunks = list(client.chat(model=MODEL, messages=messages, options=GREEDY, stream=True))
    assert len(chunks) >= 2
    for chunk in chunks[:-1]:
        assert chunk.done is False and chunk.message.role == "assistant", chunk
    check_final(chunks[-1].model_dump(), "chat stream", max_eval=8)
    assert "".join(c.message.content or "" for c in chunks) == full.message.content
    # Multi-turn with a system message.
    history = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada!"},
        {"role": "user", "content": "What is my name?"},
    ]
    r = client.chat(model=MODEL, messages=history, options=GREEDY)
    assert r.message.content.strip() and r.prompt_eval_count > 0, r
    # The tuned model's parameters apply without request options (num_predict 8 from the Modelfile).
    r = client.chat(model="smollm2-tuned", messages=[{"role": "user", "content": "Tell me a long story."}])
    assert r.eval_count <= 8, f"model parameter num_predict 8 ignored: {r.eval_count}"
    lines = ndjson(raw.post("/api/chat", json={"model": MODEL, "messages": messages, "options": GREEDY}))
    assert "".join(line["message"]["content"] for line in lines) == full.message.content


@step
def load_and_unload():
    r = raw.post("/api/generate", json={"model": MODEL, "stream": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["done"] is True and body["done_reason"] == "load" and body["response"] == "", body
    r = raw.post("/api/chat", json={"model": MODEL, "messages": [], "stream": False})
    assert r.status_code == 200 and r.json()["done_reason"] == "load", r.text


# ---------------------------------------------------------------------------------------------------------------
# Structured outputs


PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "likes_tea": {"type": "boolean"},
    },
    "required": ["name", "age", "likes_tea"],
    "additionalProperties": False,
}


@step
def format_json():
    r = client.generate(
        model=MODEL,
        prompt="Describe a cat as a JSON object with keys name and color.",
        format="json",
        options={"temperature": 0, "num_predict": 200},
    )
    assert r.done_reason == "stop", f"JSON output cut at num_predict: {r.response!r}"
    value = json.loads(r.response)
    assert isinstance(value, (dict, list)), value
    r = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object describing a dog."}],
        format="json",
        options={"temperature": 0, "num_predict": 200},
    )
    # A small model may ramble past num_predict inside a valid JSON document; only a finished answer must parse.
    assert r.done_reason in ("stop", "length"), r.done_reason
    assert r.message.content.lstrip()[:1] in ("{", "["), r.message.content
    if r.done_reason == "stop":
        json.loads(r.message.content)


@step
def format_schema():
    for temperature in (0, 0.8):
        r = client.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "Invent a person. Reply in JSON."}],
            format=PERSON_SCHEMA,
            options={"temperature": temperature, "seed": 7, "num_predict": 200},
        )
        assert r.done_reason == "stop", f"schema output cut: {r.message.content!r}"
        value = json.loads(r.message.content)
        jsonschema.validate(value, PERSON_SCHEMA)
    r = client.generate(
        model=MODEL,
        prompt="Invent a person.",
        format=PERSON_SCHEMA,
        options={"temperature": 0, "num_predict": 200},
        stream=True,
    )
    text = "".join(chunk.response for chunk in r)
    jsonschema.validate(json.loads(text), PERSON_SCHEMA)
    # An invalid schema is a 400, not a crash.
    r = raw.post("/api/generate", json={"model": MODEL, "prompt": "x", "format": {"type": 5}, "stream": False})
    assert r.status_code == 400 and isinstance(r.json().get("error"), str), (r.status_code, r.text)
    r = raw.post("/api/generate", json={"model": MODEL, "prompt": "x", "format": "yaml", "stream": False})
    assert r.status_code == 400, (r.status_code, r.text)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# A 135M model rarely calls tools on its own; a schema makes the answer a call, so the parsing is what is tested.
CALL_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"const": "get_weather"},
        "arguments": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
    "required": ["name", "arguments"],
}


@step
def tool_calls():
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    for stream in (False, True):
        options = {"temperature": 0, "num_predict": 60}
        if stream:
            chunks = list(client.chat(model=MODEL, messages=messages, tools=[WEATHER_TOOL], format=CALL_SCHEMA,
                                      options=options, stream=True))
            calls = [call for chunk in chunks for call in (chunk.message.tool_calls or [])]
            content = "".join(chunk.message.content or "" for chunk in chunks)
            assert chunks[-1].done, chunks[-1]
        else:
            r = client.chat(model=MODEL, messages=messages, tools=[WEATHER_TOOL], format=CALL_SCHEMA, options=options)
            calls, content = r.message.tool_calls or [], r.message.content
        assert content == "", f"a tool call is not content: {content!r}"
        assert len(calls) == 1 and calls[0].function.name == "get_weather", calls
        assert isinstance(calls[0].function.arguments, dict) and isinstance(calls[0].function.arguments.get("city"), str)
    # Without tools the same JSON is ordinary content.
    r = client.chat(model=MODEL, messages=messages, format=CALL_SCHEMA, options={"temperature": 0, "num_predict": 60})
    assert not r.message.tool_calls and json.loads(r.message.content)["name"] == "get_weather", r.message
    # OpenAI: tool_calls with ids, arguments as a JSON string, finish_reason tool_calls.
    r = oai.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], temperature=0, max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "call", "schema": CALL_SCHEMA}},
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id and call.function.name == "get_weather", call
    assert isinstance(json.loads(call.function.arguments).get("city"), str), call


# ---------------------------------------------------------------------------------------------------------------
# Embeddings


@step
def embed_one_and_batch():
    one = client.embed(model=MODEL, input="The sky is blue.")
    assert one.model in (MODEL, MODEL_TAG), one.model
    assert len(one.embeddings) == 1, len(one.embeddings)
    vector = one.embeddings[0]
    assert len(vector) == EMBEDDING_LENGTH, len(vector)
    assert all(isinstance(x, float) and math.isfinite(x) for x in vector)
    assert abs(norm(vector) - 1.0) < 1e-3, norm(vector)
    assert is_int(one.total_duration) and one.total_duration > 0, one.total_duration
    assert is_int(one.load_duration), one.load_duration
    assert is_int(one.prompt_eval_count) and one.prompt_eval_count > 0, one.prompt_eval_count
    texts = ["The sky is blue.", "Grass is green.", "I like turtles."]
    batch = client.embed(model=MODEL, input=texts)
    assert len(batch.embeddings) == 3, len(batch.embeddings)
    for v in batch.embeddings:
        assert len(v) == EMBEDDING_LENGTH and abs(norm(v) - 1.0) < 1e-3, (len(v), norm(v))
    assert cosine(batch.embeddings[0], vector) > 0.9999, "batched and single embeddings of one text differ"
    assert cosine(batch.embeddings[0], batch.embeddings[2]) < 0.999, "different texts, same vector"
    assert batch.prompt_eval_count > one.prompt_eval_count, batch.prompt_eval_count
    STATE["embedding"] = vector
    r = raw.post("/api/embed", json={"model": MODEL, "input": texts})
    body = r.json()
    for key in ("model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"):
        assert key in body, f"embed lacks {key}"
    # Empty batch: no vectors, still a 200 (Ollama loads the model and answers []).
    r = raw.post("/api/embed", json={"model": MODEL, "input": []})
    assert r.status_code == 200 and r.json()["embeddings"] == [], r.text


@step
def embed_truncate_and_dimensions():
    long_text = "word " * 3000
    r = raw.post("/api/embed", json={"model": MODEL, "input": long_text, "options": {"num_ctx": 256}, "truncate": False})
    assert r.status_code == 400 and r.json()["error"], (r.status_code, r.text)
    r = client.embed(model=MODEL, input=long_text, options={"num_ctx": 256})
    assert len(r.embeddings[0]) == EMBEDDING_LENGTH and r.prompt_eval_count <= 256, r.prompt_eval_count
    r = client.embed(model=MODEL, input="The sky is blue.", dimensions=64)
    assert len(r.embeddings[0]) == 64 and abs(norm(r.embeddings[0]) - 1.0) < 1e-3, len(r.embeddings[0])


@step
def embeddings_legacy():
    r = client.embeddings(model=MODEL, prompt="The sky is blue.")
    vector = r.embedding
    assert len(vector) == EMBEDDING_LENGTH, len(vector)
    assert cosine(vector, STATE["embedding"]) > 0.9999, "/api/embeddings and /api/embed disagree"
    body = raw.post("/api/embeddings", json={"model": MODEL, "prompt": "The sky is blue."}).json()
    assert list(body) == ["embedding"], body.keys()


# ---------------------------------------------------------------------------------------------------------------
# ps


@step
def ps_lists_loaded_model():
    r = raw.get("/api/ps")
    assert r.status_code == 200, r.text
    models = r.json()["models"]
    by_name = {m["name"]: m for m in models}
    assert MODEL_TAG in by_name, sorted(by_name)
    m = by_name[MODEL_TAG]
    assert m["model"] == MODEL_TAG, m
    assert is_int(m["size"]) and m["size"] >= os.path.getsize(GGUF), m["size"]
    check_digest_hex(m["digest"], "ps digest")
    assert m["digest"] == STATE.get("manifest_digest"), (m["digest"], STATE.get("manifest_digest"))
    check_details(m["details"], "ps")
    expires = check_timestamp(m["expires_at"], "ps expires_at")
    assert expires.year >= 2000, expires
    assert is_int(m["size_vram"]) and m["size_vram"] >= 0, m
    if "context_length" in m:
        assert is_int(m["context_length"]) and m["context_length"] > 0, m
    listed = client.ps()
    assert MODEL_TAG in [p.model for p in listed.models], listed
    # keep_alive 0 unloads: the answer says "unload", and ps no longer lists it (polled: unloading may lag).
    r = raw.post("/api/generate", json={"model": MODEL, "keep_alive": 0, "stream": False})
    assert r.status_code == 200 and r.json()["done_reason"] == "unload", r.text
    for _ in range(100):
        if MODEL_TAG not in [m["name"] for m in raw.get("/api/ps").json()["models"]]:
            break
        threading.Event().wait(0.1)
    else:
        raise AssertionError("keep_alive 0 did not unload the model")
    # A request with keep_alive -1 keeps it forever: expires_at far in the future.
    client.generate(model=MODEL, prompt="hi", options={"num_predict": 1}, keep_alive=-1)
    m = {m["name"]: m for m in raw.get("/api/ps").json()["models"]}[MODEL_TAG]
    assert check_timestamp(m["expires_at"], "expires_at (forever)").year >= 2100, m["expires_at"]
    client.generate(model=MODEL, prompt="hi", options={"num_predict": 1}, keep_alive="5m")


# ---------------------------------------------------------------------------------------------------------------
# OpenAI-compatible routes


@step
def openai_models():
    listed = oai.models.list()
    ids = [m.id for m in listed.data]
    assert MODEL_TAG in ids, ids
    for m in listed.data:
        assert m.object == "model" and is_int(m.created) and isinstance(m.owned_by, str) and m.owned_by, m
    body = raw.get("/v1/models").json()
    assert body["object"] == "list", body
    one = oai.models.retrieve(MODEL_TAG)
    assert one.id == MODEL_TAG and one.object == "model" and is_int(one.created), one
    try:
        oai.models.retrieve("no-such-model")
    except openai.NotFoundError as error:
        assert error.status_code == 404 and openai_message(error), error.body
    else:
        raise AssertionError("retrieving a missing model succeeded")


@step
def openai_chat_completions():
    messages = [{"role": "user", "content": "Say hello."}]
    r = oai.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=8, seed=42)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and is_int(r.created), r
    assert r.model == MODEL or r.model == MODEL_TAG, r.model
    assert len(r.choices) == 1 and r.choices[0].index == 0, r.choices
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip(), choice
    assert choice.finish_reason in ("stop", "length"), choice.finish_reason
    u = r.usage
    assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= 8 and u.total_tokens == u.prompt_tokens + u.completion_tokens, u
    assert r.system_fingerprint is None or isinstance(r.system_fingerprint, str)
    # Greedy, same options as the native chat: the same text.
    if "chat_text" in STATE:
        assert choice.message.content == STATE["chat_text"], (choice.message.content, STATE["chat_text"])
    stream = oai.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=8, seed=42, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks, "no chunks"
    text = ""
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1, f"{len(finish)} chunks carry finish_reason"
    for c in chunks:
        assert c.object == "chat.completion.chunk" and c.id == chunks[0].id, c
        if c.choices:
            text += c.choices[0].delta.content or ""
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage is not None, f"last chunk is not the usage chunk: {usage}"
    assert usage.usage.completion_tokens == u.completion_tokens and usage.usage.prompt_tokens == u.prompt_tokens, usage.usage
    assert all(c.usage is None for c in chunks[:-1]), "usage before the last chunk"
    assert text == choice.message.content, (text, choice.message.content)
    # Without include_usage: no usage chunk.
    chunks = list(oai.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=8, stream=True))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices, "usage without include_usage"
    # The wire: SSE frames ending with [DONE].
    with raw.stream("POST", "/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 4, "stream": True}) as s:
        assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream"), s.headers
        frames = [line for line in s.iter_lines() if line.strip()]
    assert frames[-1] == "data: [DONE]", frames[-3:]
    assert all(f.startswith("data: ") for f in frames), frames
    # JSON mode through OpenAI's response_format.
    r = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Invent a person."}],
        temperature=0,
        max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}},
    )
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON_SCHEMA)
    try:
        oai.chat.completions.create(model="no-such-model", messages=messages)
    except openai.NotFoundError as error:
        assert openai_message(error), error.body
    else:
        raise AssertionError("chat with a missing model succeeded")


@step
def openai_completions():
    r = oai.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=8, seed=42)
    assert r.id.startswith("cmpl-") and r.object == "text_completion" and is_int(r.created), r
    assert len(r.choices) == 1 and r.choices[0].index == 0, r
    choice = r.choices[0]
    assert isinstance(choice.text, str) and choice.text.strip(), choice
    assert choice.finish_reason in ("stop", "length"), choice.finish_reason
    assert 0 < r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0, r.usage
    chunks = list(
        oai.completions.create(
            model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=8, seed=42, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == choice.text, (text, choice.text)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens, chunks[-1]
    assert all(c.object == "text_completion" for c in chunks), {c.object for c in chunks}


@step
def openai_embeddings():
    r = oai.embeddings.create(model=MODEL, input="The sky is blue.", encoding_format="float")
    assert r.object == "list" and len(r.data) == 1, r
    item = r.data[0]
    assert item.object == "embedding" and item.index == 0 and len(item.embedding) == EMBEDDING_LENGTH, item
    assert cosine(item.embedding, STATE["embedding"]) > 0.9999, "/v1/embeddings and /api/embed disagree"
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens, r.usage
    r = oai.embeddings.create(model=MODEL, input=["The sky is blue.", "Grass is green."], encoding_format="float")
    assert [d.index for d in r.data] == [0, 1] and all(len(d.embedding) == EMBEDDING_LENGTH for d in r.data), r


@step
def openai_embeddings_base64():
    """The openai client asks for base64 unless told otherwise (and decodes it itself)."""
    r = oai.embeddings.create(model=MODEL, input="The sky is blue.")
    assert len(r.data[0].embedding) == EMBEDDING_LENGTH, len(r.data[0].embedding)
    assert cosine(r.data[0].embedding, STATE["embedding"]) > 0.9999, "base64 embedding differs"
    body = raw.post("/v1/embeddings", json={"model": MODEL, "input": "x", "encoding_format": "base64"}).json()
    packed = base64.b64decode(body["data"][0]["embedding"])
    assert len(packed) == 4 * EMBEDDING_LENGTH, len(packed)
    floats = struct.unpack(f"<{EMBEDDING_LENGTH}f", packed)
    assert abs(norm(floats) - 1.0) < 1e-3, norm(floats)


# ---------------------------------------------------------------------------------------------------------------
# copy, delete


@step
def copy_model():
    assert client.copy(MODEL, "smollm2-copy").status == "success"
    names = [m.model for m in client.list().models]
    assert "smollm2-copy:latest" in names and MODEL_TAG in names, names
    copied = client.show("smollm2-copy")
    assert copied.details.family == "llama", copied
    r = client.generate(model="smollm2-copy", prompt="Why is the sky blue?", options=GREEDY)
    assert r.response == STATE.get("generate_text"), "a copy answers differently"
    r = raw.post("/api/copy", json={"source": "no-such-model", "destination": "x"})
    assert r.status_code == 404 and r.json()["error"], r.text
    r = raw.post("/api/copy", json={"source": MODEL, "destination": "smollm2-copy:v2"})
    assert r.status_code == 200, r.text


@step
def delete_models():
    for name in ("smollm2-copy", "smollm2-copy:v2", "smollm2-tuned", "smollm2-raw"):
        assert client.delete(name).status == "success", name
    expect_response_error(404, client.show, "smollm2-copy")
    expect_response_error(404, client.delete, "smollm2-copy")
    names = [m.model for m in client.list().models]
    assert names == [MODEL_TAG], names
    # The blob is still used by smollm2: kept.
    assert raw.head(f"/api/blobs/{STATE['digest']}").status_code == 200, "a blob in use was pruned"


# ---------------------------------------------------------------------------------------------------------------
# pull from a local registry


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REGISTRY_REQUESTS = []  # (method, path, Range header) the registry saw


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """python's file server (no Range support: a ranged GET gets the whole file with 200, which a client must
    handle), recording each request."""

    def log_message(self, *args):
        pass

    def send_head(self):
        REGISTRY_REQUESTS.append((self.command, self.path, self.headers.get("Range")))
        return super().send_head()


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hangs up mid-body (it had what it needed) is not a test failure.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def start_registry():
    """Lays out Ollama's registry paths for library/tiny:latest (the uploaded GGUF, a config and a params layer)
    and serves them with python's http.server."""
    root = os.path.join(WORK_DIR, "registry")
    library = os.path.join(root, "v2", "library", "tiny")
    os.makedirs(os.path.join(library, "manifests"), exist_ok=True)
    os.makedirs(os.path.join(library, "blobs"), exist_ok=True)

    def add_blob(data=None, path=None):
        if path is None:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            with open(os.path.join(library, "blobs", digest), "wb") as f:
                f.write(data)
            return digest, len(data)
        digest = "sha256:" + sha256_file(path)
        target = os.path.join(library, "blobs", digest)
        if not os.path.exists(target):
            os.symlink(path, target)
        return digest, os.path.getsize(path)

    model_digest, model_size = add_blob(path=GGUF)
    params_digest, params_size = add_blob(json.dumps({"temperature": 0, "num_predict": 16}).encode())
    config = {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "135M",
        "file_type": "Q4_1",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [model_digest, params_digest]},
    }
    config_digest, config_size = add_blob(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": model_digest, "size": model_size},
            {"mediaType": "application/vnd.ollama.image.params", "digest": params_digest, "size": params_size},
        ],
    }
    with open(os.path.join(library, "manifests", "latest"), "w") as f:
        json.dump(manifest, f)
    port = free_port()
    handler = functools.partial(QuietHandler, directory=root)
    server = QuietServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return port, manifest


@step
def pull_from_local_registry():
    # First free the blob: delete the last model that uses it, so the pull must download it.
    assert client.delete(MODEL).status == "success"
    expect_response_error(404, client.show, MODEL)
    assert raw.head(f"/api/blobs/{STATE['digest']}").status_code == 404, "deleting the last user kept the blob"
    if MODELS_DIR:
        left = os.listdir(os.path.join(MODELS_DIR, "blobs"))
        assert left == [], f"blobs left after deleting every model: {left}"

    port, manifest = start_registry()
    name = f"127.0.0.1:{port}/library/tiny:latest"
    progress = [p.model_dump() for p in client.pull(name, insecure=True, stream=True)]
    statuses = [p["status"] for p in progress]
    assert statuses[0] == "pulling manifest", statuses[:3]
    assert statuses[-1] == "success", statuses[-3:]
    for expected in ("verifying sha256 digest", "writing manifest"):
        assert expected in statuses, f"no {expected!r} in {sorted(set(statuses))}"
    layers = {layer["digest"]: layer["size"] for layer in manifest["layers"]}
    seen = {}
    for p in progress:
        if p["status"].startswith("pulling ") and p["status"] != "pulling manifest":
            digest = p["digest"]
            assert digest in layers or digest == manifest["config"]["digest"], p
            assert p["status"] == f"pulling {digest[7:19]}", p["status"]
            assert is_int(p["total"]) and p["total"] == layers.get(digest, manifest["config"]["size"]), p
            assert p["completed"] is None or 0 <= p["completed"] <= p["total"], p
            seen[digest] = max(seen.get(digest, 0), p["completed"] or 0)
    for digest, size in layers.items():
        assert seen.get(digest) == size, f"layer {digest[:19]} ended at {seen.get(digest)} of {size}"

    model_gets = [r for r in REGISTRY_REQUESTS if r[0] == "GET" and r[1].endswith(STATE["digest"])]
    print(f"     registry saw {len(REGISTRY_REQUESTS)} requests, {len(model_gets)} GETs of the model blob "
          f"(ranges: {sorted({r[2] for r in model_gets}, key=str)[:8]})", flush=True)
    assert raw.head(f"/api/blobs/{STATE['digest']}").status_code == 200, "pulled blob missing"
    listed = {m.model: m for m in client.list().models}
    assert name in listed, sorted(listed)
    check_details(raw.get("/api/tags").json()["models"][0]["details"], "pulled model")
    shown = client.show(name)
    assert re.search(r"^num_predict\s+16$", shown.parameters or "", re.M), shown.parameters
    r = client.generate(model=name, prompt="Why is the sky blue?", options={"temperature": 0, "num_predict": 8, "seed": 42})
    assert r.response == STATE.get("generate_text"), "the pulled model answers differently"
    # Pulling again: already here, still "success"; not streamed, one object.
    again = client.pull(name, insecure=True)
    assert again.status == "success", again
    # A tag the registry lacks.
    expect_any_error(lambda: list(client.pull(f"127.0.0.1:{port}/library/tiny:nope", insecure=True, stream=True)))
    assert client.delete(name).status == "success"
    assert client.list().models == [], client.list()
    if MODELS_DIR:
        left = os.listdir(os.path.join(MODELS_DIR, "blobs"))
        assert left == [], f"blobs left after deleting the pulled model: {left}"


def expect_any_error(call):
    try:
        call()
    except ollama.ResponseError as error:
        assert error.error, error
        return
    raise AssertionError("no error")


def main():
    only = {name for name in os.environ.get("E2E_ONLY", "").split(",") if name}
    for run in STEPS:
        if not only or run.__name__ in only:
            run()
    passed = sum(1 for _, ok, _ in RESULTS if ok)
    failed = len(RESULTS) - passed
    if failed:
        print("\nfailed: " + ", ".join(name for name, ok, _ in RESULTS if not ok))
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
