"""The MLLM captioner against a local OpenAI-compatible server started by the test (127.0.0.1 only)."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support.fixtures import fixture_module, read_records

from farslip.dataprep import (BuildConfig, MLLMCaptioner, MLLMError, OpenAIChatClient, RateLimiter, build_mgrs)
from farslip.cli import main

MAX_REQUESTS = 200  # the server refuses anything beyond this: a runaway retry loop cannot hang the suite


class FakeServer:
    """Answers POST /v1/chat/completions. ``script`` is a list of status codes to send first (then 200s)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.script: list[int] = []
        self.retry_after: str | None = None
        self.reply = None  # callable(body) -> str, the assistant content
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                srv.requests.append(body)
                srv.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions" or len(srv.requests) > MAX_REQUESTS:
                    return self._send(404, {"error": "not found"})
                if srv.script:
                    code = srv.script.pop(0)
                    if code != 200:
                        extra = {"Retry-After": srv.retry_after} if srv.retry_after else {}
                        return self._send(code, {"error": {"message": f"scripted {code}"}}, extra)
                content = srv.reply(body) if srv.reply else _default_reply(body)
                self._send(200, {"id": "x", "object": "chat.completion",
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})

            def _send(self, code, obj, extra=None):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _default_reply(body):
    content = body["messages"][0]["content"]
    text = content if isinstance(content, str) else content[0]["text"]
    n = text.count("\n- ")
    return json.dumps({"brief": f"An image with {n} listed objects.",
                       "detailed": f"MLLM caption. The list had {n} objects. It is a test."})


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def _client(server, tmp_path, **kw):
    kw.setdefault("sleep", lambda s: None)
    return OpenAIChatClient(server.url, "test-model", api_key="secret", timeout=5, backoff=0.01,
                            cache_dir=tmp_path / "cache", **kw)


MSG = [{"role": "user", "content": "hello"}]


def test_request_shape_and_cache(server, tmp_path):
    c = _client(server, tmp_path)
    assert "0 listed objects" in c.chat(MSG)
    assert len(server.requests) == 1
    body = server.requests[0]
    assert body["model"] == "test-model" and body["messages"] == MSG
    assert server.headers[0]["Authorization"] == "Bearer secret"
    c.chat(MSG)  # same request: answered from the on-disk cache
    assert len(server.requests) == 1 and c.stats["cache_hits"] == 1
    c2 = _client(server, tmp_path)  # a new process resuming: same cache folder
    c2.chat(MSG)
    assert len(server.requests) == 1
    c.chat(MSG, temperature=0.5)  # different parameters: a new request
    assert len(server.requests) == 2


def test_retries_then_success(server, tmp_path):
    delays = []
    c = _client(server, tmp_path, sleep=delays.append, max_retries=4)
    server.script = [500, 503, 429]
    server.reply = lambda body: "ok"
    assert c.chat(MSG) == "ok"
    assert len(server.requests) == 4 and c.stats["retries"] == 3
    assert delays == [0.01, 0.02, 0.04]  # exponential back-off


def test_retry_after_header_wins(server, tmp_path):
    delays = []
    c = _client(server, tmp_path, sleep=delays.append)
    server.script, server.retry_after = [429], "0.25"
    server.reply = lambda body: "ok"
    assert c.chat(MSG) == "ok" and delays == [0.25]


def test_gives_up_and_does_not_retry_client_errors(server, tmp_path):
    c = _client(server, tmp_path, max_retries=2)
    server.script = [503] * 10
    with pytest.raises(MLLMError, match="3 attempts.*HTTP 503"):
        c.chat(MSG)
    assert len(server.requests) == 3
    server.script = [400]
    with pytest.raises(MLLMError, match="HTTP 400"):
        c.chat([{"role": "user", "content": "other"}])
    assert len(server.requests) == 4  # no retry on 400


def test_unreachable_server(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    c = OpenAIChatClient(f"http://127.0.0.1:{port}/v1", "m", timeout=2, max_retries=1, sleep=lambda s: None)
    with pytest.raises(MLLMError, match="cannot reach"):
        c.chat(MSG)


def test_rate_limiter_spacing():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    rl = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        rl.wait()
    assert slept == [0.25, 0.25, 0.25]
    RateLimiter(None).wait()  # unlimited: returns at once


def test_captioner_sends_image_and_objects(server, tmp_path):
    from PIL import Image

    img = tmp_path / "a.jpg"
    Image.new("RGB", (2000, 1000), (10, 20, 30)).save(img)
    cap = MLLMCaptioner(_client(server, tmp_path), max_side=512)
    objs = [{"category": "ship", "box": [1, 2, 30, 40]}, {"category": "harbor", "box": [0, 0, 100, 100]}]
    c = cap(img, objs, 2000, 1000, scene="harbor")
    assert c["brief_caption"] == c["global_caption"] == "An image with 2 listed objects."
    assert c["detailed_caption"].startswith("MLLM caption.")
    content = server.requests[0]["messages"][0]["content"]
    assert "- ship: [1, 2, 30, 40]" in content[0]["text"] and "harbor" in content[0]["text"]
    url = content[1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    import base64
    import io

    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
        assert max(im.size) == 512  # downscaled before sending


def _dota_cfg(tmp_path, out):
    root = fixture_module("dota").make(tmp_path / "dota")
    return BuildConfig(format="dota", images=str(root / "images"), labels=str(root / "labelTxt"), out=str(out),
                       captioner="mllm")


def test_build_with_mllm_resumes_from_cache_and_falls_back(server, tmp_path):
    out = tmp_path / "out"
    cfg = _dota_cfg(tmp_path, out)
    cap = MLLMCaptioner(_client(server, tmp_path))
    s = build_mgrs(cfg, mllm=cap, progress=False, caption_workers=2)
    recs = read_records(out)
    assert all(r["detailed_caption"].startswith("MLLM caption.") for r in recs)
    assert len(server.requests) == 3 and s["counts"].get("caption_failed", 0) == 0
    s = build_mgrs(cfg, mllm=MLLMCaptioner(_client(server, tmp_path)), progress=False)  # resume: all cached
    assert len(server.requests) == 3 and s["resumed"] == 2
    # a server that always fails: template captions, reported, not fatal
    server.script = [500] * 50
    cfg2 = _dota_cfg(tmp_path / "b", tmp_path / "out2")
    cap2 = MLLMCaptioner(OpenAIChatClient(server.url, "test-model", max_retries=1, sleep=lambda s: None,
                                          cache_dir=tmp_path / "cache2"))
    s = build_mgrs(cfg2, mllm=cap2, progress=False, caption_workers=1)
    assert s["problems"]["caption-failed"] == 3 and s["counts"]["caption_failed"] == 3
    assert all("MLLM" not in r["detailed_caption"] for r in read_records(tmp_path / "out2"))
    assert len(server.requests) == 3 + 6  # 3 images x 2 attempts


def test_cli_caption_with_mllm(server, tmp_path, capsys):
    out = tmp_path / "out"
    build_mgrs(BuildConfig(**{**_dota_cfg(tmp_path, out).__dict__, "captioner": "template"}), progress=False)
    dst = tmp_path / "vlm.json"
    rc = main(["data", "caption", str(out), "--out", str(dst), "--captioner", "mllm", "--mllm-url", server.url,
               "--mllm-model", "m", "--mllm-rate", "0", "--no-progress"])
    assert rc == 0 and "captioned 3 records" in capsys.readouterr().out
    recs = json.loads(dst.read_text())
    assert all(r["detailed_caption"].startswith("MLLM caption.") for r in recs)
    assert [r["global_filepath"] for r in recs] == [r["global_filepath"] for r in read_records(out)]
    assert len(server.requests) == 3
