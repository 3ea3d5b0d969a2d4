"""The console's web application (FastAPI): pages, the live event streams, the file proxy and actions.

    vidtune console [--host 127.0.0.1] [--port 8080]

Everything it shows is read on request from the services (JobService) and the object store; it keeps
nothing but caches, so any number of replicas can serve the same team."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections import OrderedDict
from pathlib import Path
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from vidtune.platform.errors import NotFound
from vidtune.platform.storage import Storage, is_s3, split_uri

from . import views
from .auth import COOKIE, Access, Session
from .gateway import Gateway, submit_methods

HERE = Path(__file__).parent
LIST_EVERY_S = 3.0      # how often the overview stream looks for new jobs
HEARTBEAT_S = 15.0
TRAINING_READ_EVERY_S = 1.0
VIDEO_METRICS = ("clip_score", "temporal_consistency", "flicker", "sharpness", "quality")  # under each video


def create_app(gateway: Gateway | None = None, storage: Storage | None = None, access: Access | None = None,
               buckets: list[str] | None = None) -> FastAPI:
    app = FastAPI(title="vidtune console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gateway or Gateway()
    app.state.storage = storage or Storage()
    app.state.access = access or Access.from_env()
    app.state.copies = views.LocalCopies(app.state.storage)
    app.state.frames = OrderedDict()
    default_bucket = os.environ.get("VIDTUNE_BUCKET", "vidtune")
    app.state.buckets = set(buckets or [default_bucket] + [b for b in os.environ.get(
        "VIDTUNE_CONSOLE_BUCKETS", "").split(",") if b])
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["file_url"] = lambda uri: f"/files?uri={quote(uri, safe='')}"
    templates.env.filters["tojson_attr"] = lambda v: json.dumps(v, ensure_ascii=False)
    templates.env.globals["is_s3"] = lambda v: isinstance(v, str) and is_s3(v)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def session_of(request: Request) -> Session | None:
        a: Access = app.state.access
        return a.bearer_session(request.headers.get("authorization")) or a.session(request.cookies.get(COOKIE))

    def page(request: Request, name: str, **ctx) -> Response:
        s = session_of(request)
        if s is None:
            return RedirectResponse(f"/login?next={quote(str(request.url.path))}", status_code=303)
        return templates.TemplateResponse(request, name, {"session": s, "active": name.split(".")[0], **ctx})

    def require(request: Request, act: bool = False, form: dict | None = None) -> Session:
        s = session_of(request)
        if s is None:
            raise HTTPException(401, "log in first (or send Authorization: Bearer <token>)")
        if act:
            if not s.can_act:
                raise HTTPException(403, "this session is read-only")
            if s.nonce and (form or {}).get("csrf") != s.csrf:
                raise HTTPException(403, "the form's CSRF token is missing or stale; reload the page")
        return s

    async def form_of(request: Request) -> dict[str, str]:
        body = (await request.body()).decode("utf-8", "replace")
        return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}

    def in_thread(fn, *args, **kw):
        return asyncio.to_thread(fn, *args, **kw)

    async def find_jobs(service: str | None = None, kind_prefix: str = "", state: str = "") -> list[dict]:
        jobs, _ = await app.state.gateway.all_jobs()
        return [j for j in jobs if (not service or j["service"] == service) and j["kind"].startswith(kind_prefix)
                and (not state or j["state"] == state)]

    async def job_or_404(ref: str) -> dict:
        service, _, job_id = (ref or "").partition("/")
        if not job_id:
            raise HTTPException(404, f"no job named {ref!r}; expected <service>/<job id>")
        try:
            return await app.state.gateway.get_job(service, job_id)
        except KeyError:
            raise HTTPException(404, f"unknown service {service!r}") from None
        except Exception as e:
            raise HTTPException(404, f"job {ref}: {e}") from None

    # ---------------------------------------------------------------- access
    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, next: str = "/"):
        return templates.TemplateResponse(request, "login.html", {"next": next, "error": "", "session": None})

    @app.post("/login")
    async def login(request: Request):
        form = await form_of(request)
        role = app.state.access.role_of(form.get("token", ""))
        nxt = form.get("next") or "/"
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"
        if role is None:
            return templates.TemplateResponse(request, "login.html", {"next": nxt, "session": None,
                                              "error": "token refused: it is neither the console's token nor "
                                                       "its read-only token"}, status_code=401)
        resp = RedirectResponse(nxt, status_code=303)
        resp.set_cookie(COOKIE, app.state.access.new_cookie(role), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", max_age=12 * 3600, path="/")
        return resp

    @app.post("/logout")
    async def logout(request: Request):
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    # ---------------------------------------------------------------- overview and live jobs
    @app.get("/", response_class=HTMLResponse)
    async def overview(request: Request):
        if session_of(request) is None:
            return page(request, "overview.html")
        jobs, down = await app.state.gateway.all_jobs()
        return page(request, "overview.html", jobs=jobs, down=down)

    @app.get("/api/jobs")
    async def api_jobs(request: Request):
        require(request)
        jobs, down = await app.state.gateway.all_jobs()
        return {"jobs": jobs, "unavailable": down}

    @app.get("/api/events")
    async def api_events(request: Request):
        """Server-sent events: `job` with the whole record each time any job changes (WatchJob streams for
        running jobs, a listing every few seconds for new ones)."""
        require(request)
        return StreamingResponse(job_events(app.state.gateway), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/jobs/{service}/{job_id}", response_class=HTMLResponse)
    async def job_page(request: Request, service: str, job_id: str):
        if session_of(request) is None:
            return page(request, "job.html")
        job = await job_or_404(f"{service}/{job_id}")
        return page(request, "job.html", job=job, job_json=json.dumps(job, ensure_ascii=False, indent=2))

    @app.post("/jobs/{service}/{job_id}/cancel")
    async def cancel(request: Request, service: str, job_id: str):
        form = await form_of(request)
        require(request, act=True, form=form)
        try:
            await app.state.gateway.cancel(service, job_id)
        except Exception as e:
            raise HTTPException(400, f"cancel {service}/{job_id}: {e}") from None
        return RedirectResponse(form.get("next") or f"/jobs/{service}/{job_id}", status_code=303)

    # ---------------------------------------------------------------- dataset and quality
    async def quality_choice(request: Request, out: str) -> tuple[str, list[dict]]:
        runs = [j for j in await find_jobs("quality", state="SUCCEEDED") if (j.get("spec") or {}).get("output")]
        return out or (runs[0]["spec"]["output"] if runs else ""), runs

    @app.get("/dataset", response_class=HTMLResponse)
    async def dataset(request: Request, out: str = ""):
        if session_of(request) is None:
            return page(request, "dataset.html")
        out, runs = await quality_choice(request, out)
        stats, error = None, ""
        if out:
            try:
                stats = json.loads(await in_thread(app.state.storage.read_text, out.rstrip("/") + "/stats.json"))
            except NotFound as e:
                error = str(e)
        return page(request, "dataset.html", out=out, runs=runs, error=error,
                    charts=views.dataset_charts(stats) if stats else {},
                    facts=views.dataset_facts(stats) if stats else [])

    @app.get("/quality", response_class=HTMLResponse)
    async def quality(request: Request, out: str = "", rule: str = "", q: str = "", offset: int = 0,
                      limit: int = 50):
        if session_of(request) is None:
            return page(request, "quality.html")
        out, runs = await quality_choice(request, out)
        data, report, error, root = None, {}, "", ""
        if out:
            try:
                qo = await in_thread(views.quality_outputs, app.state.storage, out)
                report = qo["report"]
                path = await in_thread(app.state.copies.path, qo["rejected"])
                data = await in_thread(views.rejected_page, path, rule, q, offset, max(1, min(limit, 200)))
                root = next((j["spec"].get("root", "") for j in runs if j["spec"].get("output") == out), "")
            except NotFound as e:
                error = str(e)
        return page(request, "quality.html", out=out, runs=runs, data=data, report=report, rule=rule, q=q,
                    error=error, root=root, media_uri=views.media_uri)

    @app.get("/frame")
    async def frame(request: Request, uri: str):
        """A key frame (JPEG, 240 px wide) of a clip or a still, taken by ffmpeg from a presigned URL."""
        require(request)
        source = readable(uri)
        cache: OrderedDict = app.state.frames
        if uri not in cache:
            cache[uri] = await in_thread(key_frame, source)
            while len(cache) > 512:
                cache.popitem(last=False)
        data = cache[uri]
        if not data:
            raise HTTPException(404, f"no frame could be decoded from {uri}")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    # ---------------------------------------------------------------- training
    @app.get("/training", response_class=HTMLResponse)
    async def training(request: Request, job: str = ""):
        if session_of(request) is None:
            return page(request, "training.html")
        runs = await find_jobs("train")
        chosen = await job_or_404(job) if job else (runs[0] if runs else None)
        out = ((chosen or {}).get("spec") or {}).get("output", "")
        ckpts = await in_thread(views.checkpoints, app.state.storage, out) if out else []
        points = await in_thread(views.training_metrics, app.state.storage, out) if out else []
        return page(request, "training.html", runs=runs, job=chosen, out=out, checkpoints=ckpts,
                    samples=views.training_samples(points))

    @app.get("/api/training/{service}/{job_id}/stream")
    async def training_stream(request: Request, service: str, job_id: str, after: int = 0):
        """Server-sent events: `points` with the metrics lines written since the last event, read again
        each time WatchJob reports a step; `end` when the run has ended."""
        require(request)
        job = await job_or_404(f"{service}/{job_id}")
        out = (job.get("spec") or {}).get("output", "")
        return StreamingResponse(training_events(app.state.gateway, app.state.storage, job, out, after),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    # ---------------------------------------------------------------- evaluation
    @app.get("/evaluation", response_class=HTMLResponse)
    async def evaluation(request: Request, job: str = ""):
        if session_of(request) is None:
            return page(request, "evaluation.html")
        runs = [j for j in await find_jobs("evaluate", "evaluate.compare", "SUCCEEDED")]
        chosen = await job_or_404(job) if job else (runs[0] if runs else None)
        data, error = None, ""
        if chosen:
            spec = chosen.get("spec") or {}
            try:
                data = await in_thread(views.evaluation, app.state.storage, spec.get("output", ""),
                                       list(spec.get("scores") or []))
            except NotFound as e:
                error = str(e)
        return page(request, "evaluation.html", runs=runs, job=chosen, data=data, error=error,
                    video_metrics=VIDEO_METRICS)

    # ---------------------------------------------------------------- actions
    @app.get("/actions", response_class=HTMLResponse)
    async def actions(request: Request, message: str = ""):
        if session_of(request) is None:
            return page(request, "actions.html")
        forms = {s: submit_methods(s) for s in app.state.gateway.services}
        active = [j for j in (await app.state.gateway.all_jobs())[0] if not j["terminal"]]
        return page(request, "actions.html", forms=forms, active=active, message=message)

    @app.post("/actions/submit")
    async def submit(request: Request):
        form = await form_of(request)
        require(request, act=True, form=form)
        method = next((m for m in submit_methods(form.get("service", "")) if m.name == form.get("method")), None) \
            if form.get("service") in app.state.gateway.services else None
        if method is None:
            raise HTTPException(400, f"no such action: {form.get('service')}.{form.get('method')}")
        try:
            job = await app.state.gateway.submit(method, form)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        except Exception as e:
            return RedirectResponse(f"/actions?message={quote(f'{method.name} refused: {e}'[:500])}",
                                    status_code=303)
        return RedirectResponse(f"/jobs/{job['service']}/{job['id']}", status_code=303)

    # ---------------------------------------------------------------- files
    def readable(uri: str) -> str:
        """Only objects in the team's buckets are served (never local paths or other buckets)."""
        if not is_s3(uri):
            raise HTTPException(403, f"{uri}: only s3:// objects are served")
        bucket, _ = split_uri(uri)
        if bucket not in app.state.buckets:
            raise HTTPException(403, f"{uri}: bucket {bucket!r} is not served by this console")
        return uri

    def key_frame(uri: str) -> bytes:
        bucket, key = app.state.storage._split(uri)
        url = app.state.storage.client.presigned_get_object(bucket, key)
        is_video = key.lower().endswith((".mp4", ".mov", ".mkv", ".webm", ".avi", ".ts"))
        cmd = ["ffmpeg", "-nostdin", "-v", "error", *(["-ss", "0.5"] if is_video else []), "-i", url,
               "-frames:v", "1", "-vf", "scale=240:-2", "-f", "image2", "-c:v", "mjpeg", "pipe:1"]
        r = subprocess.run(cmd, capture_output=True, timeout=30)
        if (r.returncode != 0 or not r.stdout) and is_video:  # a clip shorter than half a second
            cmd = [c for c in cmd if c not in ("-ss", "0.5")]
            r = subprocess.run(cmd, capture_output=True, timeout=30)
        return r.stdout if r.returncode == 0 else b""

    @app.get("/files")
    async def files(request: Request, uri: str, download: bool = False):
        """An object of the store, streamed with Range support (videos seek) through the console."""
        require(request)
        readable(uri)
        storage = app.state.storage
        bucket, key = storage._split(uri)
        try:
            st = await in_thread(storage._stat, bucket, key)
        except NotFound as e:
            raise HTTPException(404, str(e)) from None
        size, start, end, status = st.size, 0, st.size - 1, 200
        rng = request.headers.get("range", "")
        if rng.startswith("bytes=") and size:
            a, _, b = rng[6:].split(",")[0].partition("-")
            start = int(a) if a else max(0, size - int(b))
            end = min(int(b), size - 1) if a and b else size - 1
            if start > end:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
        from vidtune.platform.storage import _guess_type

        headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1),
                   "Cache-Control": "private, max-age=300"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        if download:
            headers["Content-Disposition"] = f"attachment; filename=\"{key.rsplit('/', 1)[-1]}\""

        def chunks():
            if size == 0:
                return
            resp = storage.client.get_object(bucket, key, offset=start, length=end - start + 1)
            try:
                yield from resp.stream(256 * 1024)
            finally:
                resp.close()
                resp.release_conn()

        return StreamingResponse(chunks(), status_code=status, media_type=_guess_type(key), headers=headers)

    @app.on_event("shutdown")
    async def _close():
        await app.state.gateway.close()

    return app


def sse(event: str, data) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def job_events(gateway: Gateway):
    queue: asyncio.Queue = asyncio.Queue()
    watching: dict[str, asyncio.Task] = {}
    sent: dict[str, tuple] = {}

    async def follow(service: str, job_id: str):
        try:
            async for rec in gateway.watch(service, job_id):
                await queue.put(rec)
        except Exception:  # the listing picks the job up again
            pass
        finally:
            watching.pop(job_id, None)

    def changed(rec: dict) -> bool:
        key = (rec["state"], rec["progress"]["done"], rec["progress"]["total"], rec["progress"]["message"])
        if sent.get(rec["id"]) == key:
            return False
        sent[rec["id"]] = key
        return True

    last_list = last_beat = 0.0
    try:
        while True:
            now = time.monotonic()
            if now - last_list >= LIST_EVERY_S:
                last_list = now
                jobs, down = await gateway.all_jobs()
                for rec in jobs:
                    if not rec["terminal"] and rec["id"] not in watching:
                        watching[rec["id"]] = asyncio.create_task(follow(rec["service"], rec["id"]))
                    if changed(rec):
                        yield sse("job", rec)
                if down:
                    yield sse("unavailable", down)
            if now - last_beat >= HEARTBEAT_S:
                last_beat = now
                yield b": keep-alive\n\n"
            try:
                rec = await asyncio.wait_for(queue.get(), timeout=LIST_EVERY_S)
            except asyncio.TimeoutError:
                continue
            if changed(rec):
                yield sse("job", rec)
    finally:
        for t in list(watching.values()):
            t.cancel()


async def training_events(gateway: Gateway, storage: Storage, job: dict, out: str, after: int):
    last_read = 0.0

    async def send_new():
        nonlocal after, last_read
        last_read = time.monotonic()
        points = await asyncio.to_thread(views.training_metrics, storage, out, after) if out else []
        if points:
            after = points[-1]["step"]
            return sse("points", points)
        return None

    first = await send_new()
    if first:
        yield first
    if not job["terminal"]:
        async for rec in gateway.watch(job["service"], job["id"]):
            yield sse("job", {"state": rec["state"], "progress": rec["progress"]})
            if rec["terminal"] or time.monotonic() - last_read >= TRAINING_READ_EVERY_S:
                chunk = await send_new()
                if chunk:
                    yield chunk
            if rec["terminal"]:
                break
        await asyncio.sleep(0.5)  # the last flush lands just before the record turns terminal
        chunk = await send_new()
        if chunk:
            yield chunk
    yield sse("end", {"after": after})


def add_arguments(p) -> None:
    p.add_argument("--host", default=os.environ.get("VIDTUNE_CONSOLE_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("VIDTUNE_CONSOLE_PORT", "8080")))


def serve(args) -> int:
    import uvicorn

    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def register(sub) -> None:
    """`vidtune console`: serve the web console (token from VIDTUNE_TOKEN_FILE / VIDTUNE_TOKEN / the stack)."""
    p = sub.add_parser("console", help="serve the web console over the services and the object store")
    add_arguments(p)
    p.set_defaults(func=serve)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="vidtune console", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return serve(p.parse_args(argv))
