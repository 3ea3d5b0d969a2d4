import json
import secrets
import urllib.request

import pytest

from vidtune.platform.errors import InvalidArgument, NotFound
from vidtune.platform.objectstore import MAX_VOLUMES
from vidtune.platform.storage import S3Config, Storage, join, require_object_uris, split_uri, validate_key


@pytest.mark.parametrize("key", ["../x", "a/../b", "/abs", "a//b", "a/./b", "a\\b", "a\x00b", ""])
def test_bad_keys_are_refused_with_the_key_named(key):
    with pytest.raises(InvalidArgument) as e:
        validate_key(key)
    assert repr(key) in str(e.value) or "empty" in str(e.value)


def test_keys_must_stay_under_the_allowed_prefix():
    assert validate_key("team-a/clips/x.mp4", "team-a/") == "team-a/clips/x.mp4"
    with pytest.raises(InvalidArgument, match="outside the allowed prefix"):
        validate_key("team-b/x.mp4", "team-a/")


def test_split_uri_and_bucket_names():
    assert split_uri("s3://media/a/b.mp4") == ("media", "a/b.mp4")
    assert split_uri("s3://media") == ("media", "")
    for bad in ("s3://x/a", "s3://UPPER/a", "s3:///a", "http://host/a"):
        with pytest.raises(InvalidArgument):
            split_uri(bad)


def test_join_keeps_one_slash():
    assert join("s3://b/p/", "/x", "y.mp4") == "s3://b/p/x/y.mp4"
    assert join("/tmp/a", "", "b") == "/tmp/a/b"


def test_config_from_env_and_secret_dir(tmp_path):
    (tmp_path / "access-key").write_text("AK\n")
    (tmp_path / "secret-key").write_text("SK\n")
    cfg = S3Config.from_env({"VIDTUNE_S3_ENDPOINT": "https://minio.example:9000", "VIDTUNE_S3_SECRET_DIR": str(tmp_path)})
    assert (cfg.endpoint, cfg.secure, cfg.access_key, cfg.secret_key) == ("minio.example:9000", True, "AK", "SK")
    cfg = S3Config.from_env({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    assert (cfg.endpoint, cfg.secure, cfg.access_key) == ("127.0.0.1:8333", False, "a")


def test_object_store_roundtrip_list_and_missing(storage, bucket, tmp_path):
    storage.write_text(join(bucket, "a/캡션.txt"), "안녕하세요")
    src = tmp_path / "clip.bin"
    src.write_bytes(b"\x00" * 70_000)
    storage.upload(src, join(bucket, "a/b/clip.bin"))
    assert storage.read_text(join(bucket, "a/캡션.txt")) == "안녕하세요"
    assert storage.size(join(bucket, "a/b/clip.bin")) == 70_000
    assert list(storage.list(join(bucket, "a/"))) == [join(bucket, "a/b/clip.bin"), join(bucket, "a/캡션.txt")]
    assert not storage.exists(join(bucket, "nope"))
    with pytest.raises(NotFound, match="nope"):
        storage.read_bytes(join(bucket, "nope"))
    with storage.local_copy(join(bucket, "a/b/clip.bin")) as p:
        assert p.read_bytes() == src.read_bytes()
    rows = [{"id": "r1", "caption": "한강의 야경"}, {"id": "r2", "n": 2}]
    storage.write_jsonl(join(bucket, "rows.jsonl"), rows)
    assert storage.read_text(join(bucket, "rows.jsonl")).count("\n") == 2  # one object per line, UTF-8 kept
    assert "한강의 야경" in storage.read_text(join(bucket, "rows.jsonl"))
    assert storage.read_jsonl(join(bucket, "rows.jsonl")) == rows


def test_wrong_credentials_are_refused_in_one_line_naming_the_settings(object_store, bucket, storage):
    from vidtune.platform.errors import FailedPrecondition

    storage.write_text(join(bucket, "k"), "v")
    for access, secret in ((object_store.access_key, "wrong"), ("nobody", "wrong")):
        intruder = Storage(S3Config(endpoint=object_store.endpoint, access_key=access, secret_key=secret))
        with pytest.raises(FailedPrecondition) as e:
            intruder.read_bytes(join(bucket, "k"))
        assert f"object store {object_store.endpoint} refused the credentials (" in str(e.value)
        assert "VIDTUNE_S3_ACCESS_KEY" in str(e.value) and "\n" not in str(e.value)


def test_an_endpoint_that_is_not_an_s3_server_is_named(tmp_path):
    """A port-forward to the wrong port: an HTML 404 is a settings error in one line, not minio's traceback;
    a proxy's 5xx page while the store restarts is an outage, retried."""
    import http.server
    import threading

    from vidtune.platform.errors import FailedPrecondition, Unavailable

    status = {"code": 404}
    denied = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied.'
              b'</Message><BucketName>vidtune</BucketName><Key>x.txt</Key></Error>')

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status["code"])
            self.send_header("Content-Type", "application/xml" if status["code"] == 403 else "text/html")
            self.end_headers()
            self.wfile.write(denied if status["code"] == 403 else b"<html>not here</html>")

        do_HEAD = do_PUT = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"127.0.0.1:{server.server_port}"
        web = Storage(S3Config(endpoint=endpoint, access_key="a", secret_key="b", outage_seconds=1))
        with pytest.raises(FailedPrecondition) as e:
            web.read_text("s3://vidtune/x.txt")
        assert str(e.value) == f"{endpoint} did not answer as an S3 object store (HTTP 404, text/html): " \
                               f"check VIDTUNE_S3_ENDPOINT"
        status["code"] = 403  # a store denying this user (no credentials, or the bucket's policy)
        with pytest.raises(FailedPrecondition, match=f"object store {endpoint} denied access to s3://vidtune/x.txt "
                                                     r"\(AccessDenied\): check VIDTUNE_S3_ACCESS_KEY"):
            web.read_text("s3://vidtune/x.txt")
        status["code"] = 502
        with pytest.raises(Unavailable, match="unreachable"):
            web.read_text("s3://vidtune/x.txt")
    finally:
        server.shutdown()


def test_local_paths_behave_like_objects(tmp_path):
    st = Storage()
    st.write_text(str(tmp_path / "d/x.txt"), "1")
    assert list(st.list(str(tmp_path / "d"))) == [str(tmp_path / "d/x.txt")]
    with st.staged_output(str(tmp_path / "out/y.bin")) as p:
        p.write_bytes(b"abc")
        assert not (tmp_path / "out/y.bin").exists()  # published only on a clean exit
    assert (tmp_path / "out/y.bin").read_bytes() == b"abc"


def test_services_refuse_local_paths_unless_allowed(monkeypatch):
    monkeypatch.delenv("VIDTUNE_ALLOW_LOCAL_PATHS", raising=False)
    with pytest.raises(InvalidArgument, match="inputs: '/etc/passwd' is not an s3:// URI"):
        require_object_uris(["s3://bkt/x", "/etc/passwd"], "inputs")
    monkeypatch.setenv("VIDTUNE_ALLOW_LOCAL_PATHS", "1")
    require_object_uris(["/data/x"], "inputs")


def test_bucket_count_is_not_capped_by_free_disk(object_store, storage):
    # Each bucket takes a volume of its own; weed mini's automatic cap (free disk / 1 GiB) once ran out
    # after a few dozen buckets on a fuller disk and every later write failed with HTTP 500.
    status = json.loads(urllib.request.urlopen(f"http://{object_store.master}/dir/status", timeout=10).read())
    assert status["Topology"]["Max"] == MAX_VOLUMES
    for i in range(40):
        uri = f"s3://t-many-buckets-{secrets.token_hex(3)}-{i}/k"
        storage.ensure_bucket(uri)
        storage.write_bytes(uri, b"x")
        assert storage.read_bytes(uri) == b"x"


def test_an_unreachable_store_is_unavailable_in_one_line_after_the_patience():
    import time

    from vidtune.platform.errors import Unavailable
    from vidtune.platform.objectstore import free_ports

    (port,) = free_ports(1)  # nothing listens there
    dead = Storage(S3Config(endpoint=f"127.0.0.1:{port}", access_key="a", secret_key="b", outage_seconds=60))
    assert not dead.reachable(timeout=0.5)
    t0 = time.monotonic()
    with dead.patience(1.0), pytest.raises(Unavailable) as e:
        dead.write_text("s3://vidtune/x.txt", "x")
    assert time.monotonic() - t0 < 15
    assert f"object store 127.0.0.1:{port} unreachable" in str(e.value) and "\n" not in str(e.value)
