"""`ponderscope pretrained list | get` and `ponderscope import sact-tf ARCHIVE.tar.gz`.

Never the internet: a loopback HTTP server in a thread (`Mirror`) serves tar.gz archives made
here from the test fixtures (tests/fixtures/sact_tf: checkpoints the authors' TF code wrote), laid
out as the authors publish theirs (one folder with `checkpoint` and model.ckpt-NNN.*). For the
official address the catalog is pointed at the loopback server, with a published size that fits
the fixture archive. A full disk is injected through `open_file` (and, where user namespaces
allow it, made real with a tiny tmpfs in `test_real_full_disk`).
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from ponderscope import models
from ponderscope.importers import ImportFailed, archive, import_checkpoint, pretrained
from ponderscope.importers.common import DiskFull
from ponderscope.importers.download import DownloadFailed
from tests.test_import_sact import FIXTURES, nchw

ROOT = Path(__file__).resolve().parents[1]
CKPT_FILES = ("checkpoint", "model.ckpt-0.index", "model.ckpt-0.data-00000-of-00001")


@pytest.fixture(autouse=True)
def user_folder(tmp_path, monkeypatch):
    """Never the real per-user folder: $PONDERSCOPE_MODELS is a fresh folder for every test."""
    folder = tmp_path / "user-models"
    monkeypatch.setenv("PONDERSCOPE_MODELS", str(folder))
    return folder


def make_archive(fixture: str = "cifar_sact", top: str = "cifar10_resnet_5_sact_1e-2", extra=()) -> bytes:
    """A .tar.gz as the authors publish theirs: TOP/ with the fixture's checkpoint files; `extra`:
    more TarInfo members (with their bytes, or None)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(top)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        for name in CKPT_FILES:
            data = (FIXTURES / fixture / name).read_bytes()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def reference_logits(fixture: str = "cifar_sact") -> tuple[np.ndarray, np.ndarray]:
    """(the fixture's inputs, the logits the authors' TF graph computed on them)."""
    reference = dict(np.load(FIXTURES / fixture / "reference.npz"))
    return reference["inputs"], reference["logits"]


def assert_imported_computes_their_logits(folder: Path, fixture: str = "cifar_sact") -> None:
    model = models.load_checkpoint(folder)
    inputs, logits = reference_logits(fixture)
    with torch.no_grad():
        ours = model.trace(nchw(inputs)).logits.numpy()
    np.testing.assert_allclose(ours, logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())


class Mirror:
    """A loopback HTTP server in a thread. `files` {path: bytes}; Range requests answered with 206
    (If-Range compared with the ETag); `cut[path] = n`: the next GET of path announces the whole
    Content-Length, sends n bytes and closes the connection; `no_range`: Range ignored (200);
    `no_length`: no Content-Length (the body ends when the connection closes). `requests`: the
    (path, Range, If-Range) of every GET."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.no_range = False
        self.no_length = False
        self.requests: list[tuple[str, str | None, str | None]] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                mirror.requests.append((self.path, self.headers.get("Range"), self.headers.get("If-Range")))
                data = mirror.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                etag = '"' + hashlib.sha1(data).hexdigest()[:16] + '"'
                start, status = 0, 200
                wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if wanted and not mirror.no_range and self.headers.get("If-Range") in (None, etag):
                    start, status = int(wanted.group(1)), 206
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("ETag", etag)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if not mirror.no_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = mirror.cut.pop(self.path, None)
                self.wfile.write(body if cut is None else body[:cut])
                self.wfile.flush()
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror():
    server = Mirror()
    yield server
    server.close()


@pytest.fixture
def official(monkeypatch, mirror):
    """The catalog's sact-cifar10-resnet32 at the loopback server's /sact-models/, holding the
    CIFAR SACT fixture (a ResNet-14): its model name and published size those of the fixture."""
    data = make_archive()
    entry = pretrained.CATALOG["sact-cifar10-resnet32"]
    mirror.files[f"/sact-models/{entry.archive}"] = data
    monkeypatch.setattr(pretrained, "OFFICIAL", mirror.url("/sact-models/"))
    monkeypatch.setitem(pretrained.CATALOG, entry.name, dataclasses.replace(entry, model="sact_resnet14", size=f"{len(data) / 1e6:.2f} MB"))
    return data


def quiet(text: str) -> None:
    pass


def DOWNLOADS(folder: Path) -> Path:  # noqa: N802
    """Where `get` keeps sact-cifar10-resnet32's download while it runs (and a .part to continue)."""
    return folder / ".sact-cifar10-resnet32.download"


def listing(folder: Path) -> list[str]:
    """Everything under `folder`, relative, sorted (nothing half-written may hide here)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ------------------------------------------------------------------------------------------
# The catalog: the authors' addresses, names and sizes (their README, mfigurnov/sact)
# ------------------------------------------------------------------------------------------


def test_catalog_is_the_authors_readme():
    catalog = {e.name: (e.url, e.size, e.model) for e in pretrained.CATALOG.values()}
    assert catalog == {
        "sact-cifar10-resnet32": ("https://s3.us-east-2.amazonaws.com/sact-models/cifar10_resnet_5_sact_1e-2.tar.gz", "1.8 MB", "sact_resnet32"),
        "sact-imagenet-resnet101": ("https://s3.us-east-2.amazonaws.com/sact-models/imagenet_101_sact_5e-3.tar.gz", "160 MB", "sact_resnet101"),
        "imagenet-resnet101": ("https://s3.us-east-2.amazonaws.com/sact-models/imagenet_101.tar.gz", "159MB", "resnet101"),
    }
    assert pretrained.LICENCE == "Apache License 2.0" and pretrained.REPOSITORY == "https://github.com/mfigurnov/sact"


def test_published_bounds():
    """One unit of the last published digit either side, 10^6 bytes a MB at the low end, 2^20 at the high."""
    assert pretrained.published_bounds("1.8 MB") == (1_700_000, 1_992_295)
    assert pretrained.published_bounds("160 MB") == (159_000_000, 168_820_736)
    assert pretrained.published_bounds("159MB") == (158_000_000, 167_772_160)
    assert pretrained.published_bounds("0.05 MB") == (40_000, 62_915)
    with pytest.raises(ValueError, match="not a published size"):
        pretrained.published_bounds("big")


def test_list_names_sizes_addresses_and_what_is_fetched(user_folder, capsys):
    from ponderscope.cli import main

    main(["pretrained", "list"])
    text = capsys.readouterr().out
    for entry in pretrained.CATALOG.values():
        line = next(line for line in text.splitlines() if line.startswith(entry.name))
        assert entry.size in line and "[fetched]" not in line
        assert entry.url in text
    assert "91.82%" in text and "75.61% top-1" in text and "Apache License 2.0" in text and str(user_folder) in text
    (user_folder / "sact-imagenet-resnet101").mkdir(parents=True)
    (user_folder / "sact-imagenet-resnet101" / "card.json").write_text("{}")
    main(["pretrained", "list"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines if line.endswith("[fetched]")] == ["sact-imagenet-resnet101"]


def test_unknown_name_is_one_line_with_the_closest(tmp_path):
    from ponderscope.cli import main

    with pytest.raises(SystemExit) as error:
        main(["pretrained", "get", "sact-imagenet", "--out", str(tmp_path)])
    assert str(error.value) == ("ponderscope pretrained get: no published checkpoint is called 'sact-imagenet' (did you mean "
                                "sact-imagenet-resnet101?); known: sact-cifar10-resnet32, sact-imagenet-resnet101, imagenet-resnet101")
    assert listing(tmp_path) == []


# ------------------------------------------------------------------------------------------
# A good archive imports: from the official address, a mirror, a local file, `import`
# ------------------------------------------------------------------------------------------


def test_official_address_downloads_checks_and_imports(official, mirror, user_folder, capsys):
    from ponderscope.cli import main

    main(["pretrained", "get", "sact-cifar10-resnet32", "--no-progress"])
    out = user_folder / "sact-cifar10-resnet32"
    assert capsys.readouterr().out.splitlines() == [f"wrote {out}/model.safetensors and {out}/card.json", "`ponderscope serve` lists it"]
    assert listing(user_folder) == ["sact-cifar10-resnet32", "sact-cifar10-resnet32/card.json", "sact-cifar10-resnet32/model.safetensors"]
    assert mirror.requests == [("/sact-models/cifar10_resnet_5_sact_1e-2.tar.gz", None, None)]
    card = json.loads((out / "card.json").read_text())
    assert card["source"]["files"] == ["cifar10_resnet_5_sact_1e-2.tar.gz"]
    assert card["source"]["sha256"] == {"cifar10_resnet_5_sact_1e-2.tar.gz": hashlib.sha256(official).hexdigest()}
    assert card["source"]["converted"]["unpacked"] == "cifar10_resnet_5_sact_1e-2.tar.gz: cifar10_resnet_5_sact_1e-2/model.ckpt-0"
    assert card["import_command"] == "ponderscope pretrained get sact-cifar10-resnet32 --no-progress"
    assert any("https://github.com/mfigurnov/sact, Apache License 2.0" in note for note in card["source"]["notes"])
    assert_imported_computes_their_logits(out)
    # again: already there, nothing fetched
    main(["pretrained", "get", "sact-cifar10-resnet32", "--no-progress"])
    assert len(mirror.requests) == 1 and "already in" in capsys.readouterr().err


def test_fetched_model_is_listed_by_serve(official, user_folder, monkeypatch):
    """`serve` without --checkpoints: the bundled checkpoints, then the per-user folder once it exists."""
    from ponderscope.cli import main
    from ponderscope.core.loaded import ModelStore
    from ponderscope.paths import bundled_checkpoints, default_checkpoint_dirs

    import ponderscope.server.app as app

    served = []
    monkeypatch.setattr(app, "run", lambda **kwargs: served.append(kwargs["checkpoint_dirs"]))
    main(["serve"])
    assert served[-1] == [str(bundled_checkpoints())]
    pretrained.get("sact-cifar10-resnet32", progress=False, log=quiet)
    main(["serve"])
    assert served[-1] == [str(bundled_checkpoints()), str(user_folder)]
    main(["serve", "--checkpoints", "/elsewhere"])
    assert served[-1] == ["/elsewhere"]
    assert default_checkpoint_dirs() == [bundled_checkpoints(), user_folder]
    store = ModelStore([user_folder], device="cpu", execution="masked")
    assert list(store.models) == ["sact-cifar10-resnet32"] and store.errors == []
    assert store.models["sact-cifar10-resnet32"].card.model == "sact_resnet"


def test_user_folder_follows_the_platform(monkeypatch, tmp_path):
    from ponderscope import paths

    monkeypatch.delenv("PONDERSCOPE_MODELS")
    monkeypatch.setattr(paths.sys, "platform", "linux")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert paths.user_models_dir() == tmp_path / "xdg" / "ponderscope" / "models"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert paths.user_models_dir() == tmp_path / "home" / ".local" / "share" / "ponderscope" / "models"
    monkeypatch.setattr(paths.sys, "platform", "darwin")
    assert paths.user_models_dir() == tmp_path / "home" / "Library" / "Application Support" / "ponderscope" / "models"
    monkeypatch.setenv("PONDERSCOPE_MODELS", str(tmp_path / "mine"))
    assert paths.user_models_dir() == tmp_path / "mine"


def test_mirror_and_local_file(mirror, tmp_path, monkeypatch):
    """--url: a plain-http mirror under any name (its own announced size checked, not the
    published one), or a local file (read where it is, never removed); DIR may exist."""
    data = make_archive()
    mirror.files["/any/name"] = data
    out = tmp_path / "dir"
    out.mkdir()
    (out / "unrelated.txt").write_text("kept")
    # the catalog's model name is sact_resnet32: the fixture is a ResNet-14, refused with one line
    with pytest.raises(ImportFailed, match=r"holds a ResNet-14 \(\[2, 2, 2\] units per block\), not the sact_resnet32 asked for"):
        pretrained.get("sact-cifar10-resnet32", out, mirror.url("/any/name"), progress=False, log=quiet)
    assert listing(out) == ["unrelated.txt"]
    entry = pretrained.CATALOG["sact-cifar10-resnet32"]
    monkeypatch.setitem(pretrained.CATALOG, entry.name, dataclasses.replace(entry, model="sact_resnet14"))
    target = pretrained.get("sact-cifar10-resnet32", out, mirror.url("/any/name"), progress=False, log=quiet)
    assert target == out / "sact-cifar10-resnet32"
    assert_imported_computes_their_logits(target)
    local = tmp_path / "copy.tar.gz"
    local.write_bytes(data)
    for url in (str(local), local.as_uri()):
        second = tmp_path / f"dir-{len(url)}"
        target = pretrained.get("sact-cifar10-resnet32", second, url, progress=False, log=quiet)
        assert json.loads((target / "card.json").read_text())["source"]["sha256"] == {"copy.tar.gz": hashlib.sha256(data).hexdigest()}
        assert listing(second) == ["sact-cifar10-resnet32", "sact-cifar10-resnet32/card.json", "sact-cifar10-resnet32/model.safetensors"]
    assert local.read_bytes() == data
    assert sorted(listing(out)) == ["sact-cifar10-resnet32", "sact-cifar10-resnet32/card.json",
                                    "sact-cifar10-resnet32/model.safetensors", "unrelated.txt"]


def test_import_sact_tf_takes_the_published_tar_gz(tmp_path, capsys):
    from ponderscope.cli import main

    source = tmp_path / "imagenet_101_sact_5e-3.tar.gz"
    source.write_bytes(make_archive("imagenet_sact", "imagenet_101_sact_5e-3"))
    main(["import", "sact-tf", str(source), "--out", str(tmp_path / "ckpt"), "--model", "sact_resnet20"])
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path}/ckpt/model.safetensors and {tmp_path}/ckpt/card.json"
    assert_imported_computes_their_logits(tmp_path / "ckpt", "imagenet_sact")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", source.name]  # the unpacked copy is gone
    # an archive's errors name its members, not the temporary folder
    with pytest.raises(SystemExit) as error:
        main(["import", "sact-tf", str(source), "--out", str(tmp_path / "x"), "--model", "sact_resnet101"])
    assert str(error.value) == "ponderscope import: the checkpoint holds a ResNet-20 ([1, 2, 2, 1] units per block), not the sact_resnet101 asked for"


@pytest.mark.parametrize("layout,message", [
    ("none", r"holds no TF checkpoint \(no `checkpoint` file and no \*\.index file in it\)"),
    ("two", r"holds TF checkpoints in 2 folders \(a, b\): unpack it and import the one you mean"),
])
def test_archive_without_one_checkpoint_is_refused(tmp_path, layout, message):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for top in ("a", "b") if layout == "two" else ():
            for name in CKPT_FILES:
                data = (FIXTURES / "cifar_sact" / name).read_bytes()
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("README")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    source = tmp_path / "x.tgz"
    source.write_bytes(buffer.getvalue())
    with pytest.raises(ImportFailed, match=r"^x\.tgz " + message):
        import_checkpoint("sact-tf", source, tmp_path / "out", "sact_resnet14")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tgz"]


# ------------------------------------------------------------------------------------------
# A cut connection is resumed (in the run, and by the next run)
# ------------------------------------------------------------------------------------------


def test_cut_connection_is_resumed(official, mirror, tmp_path):
    path = "/sact-models/cifar10_resnet_5_sact_1e-2.tar.gz"
    mirror.cut[path] = 10_000
    notes = []
    target = pretrained.get("sact-cifar10-resnet32", tmp_path, progress=False, backoff_s=0, log=notes.append)
    etag = '"' + hashlib.sha1(official).hexdigest()[:16] + '"'
    assert mirror.requests == [(path, None, None), (path, "bytes=10000-", etag)]
    assert any("the connection closed early; continuing (try 2 of 5)" in note for note in notes)
    assert json.loads((target / "card.json").read_text())["source"]["sha256"] == {
        "cifar10_resnet_5_sact_1e-2.tar.gz": hashlib.sha256(official).hexdigest()}
    assert_imported_computes_their_logits(target)
    assert listing(tmp_path) == ["sact-cifar10-resnet32", "sact-cifar10-resnet32/card.json", "sact-cifar10-resnet32/model.safetensors"]


def test_stopped_download_is_kept_and_continued_by_the_next_run(official, mirror, tmp_path):
    path = "/sact-models/cifar10_resnet_5_sact_1e-2.tar.gz"
    mirror.cut[path] = 7_000
    with pytest.raises(DownloadFailed) as error:
        pretrained.get("sact-cifar10-resnet32", tmp_path, progress=False, attempts=1, log=quiet)
    part = DOWNLOADS(tmp_path) / "cifar10_resnet_5_sact_1e-2.tar.gz.part"
    assert str(error.value) == (f"the download of {mirror.url(path)} stopped: the connection closed early (tried 1 times); "
                                f"the 0.0 MB received are kept in {part}: run the same command again to continue")
    assert part.read_bytes() == official[:7_000]
    assert json.loads((DOWNLOADS(tmp_path) / "cifar10_resnet_5_sact_1e-2.tar.gz.part.json").read_text())["total"] == len(official)
    target = pretrained.get("sact-cifar10-resnet32", tmp_path, progress=False, attempts=1, log=quiet)
    assert mirror.requests[-1][1] == "bytes=7000-"
    assert_imported_computes_their_logits(target)
    assert not part.exists() and listing(tmp_path)[0] == "sact-cifar10-resnet32"
    assert len(listing(tmp_path)) == 3


def test_a_server_without_ranges_starts_over(official, mirror, tmp_path):
    mirror.cut["/sact-models/cifar10_resnet_5_sact_1e-2.tar.gz"] = 5_000
    mirror.no_range = True
    notes = []
    target = pretrained.get("sact-cifar10-resnet32", tmp_path, progress=False, backoff_s=0, log=notes.append)
    assert [r[1] for r in mirror.requests] == [None, "bytes=5000-"]
    assert any("from its start" in note for note in notes)
    assert_imported_computes_their_logits(target)


def test_a_part_from_another_address_is_not_continued(official, mirror, tmp_path):
    DOWNLOADS(tmp_path).mkdir()
    part = DOWNLOADS(tmp_path) / "cifar10_resnet_5_sact_1e-2.tar.gz.part"
    part.write_bytes(b"x" * 100)
    (DOWNLOADS(tmp_path) / "cifar10_resnet_5_sact_1e-2.tar.gz.part.json").write_text(json.dumps({"url": "http://elsewhere/x"}))
    target = pretrained.get("sact-cifar10-resnet32", tmp_path, progress=False, log=quiet)
    assert [r[1] for r in mirror.requests] == [None]
    assert_imported_computes_their_logits(target)


# ------------------------------------------------------------------------------------------
# The size: the published one from the official address, the announced one from a mirror
# ------------------------------------------------------------------------------------------


def test_official_address_with_another_size_is_refused(official, mirror, tmp_path, monkeypatch):
    entry = pretrained.CATALOG["sact-cifar10-resnet32"]
    monkeypatch.setitem(pretrained.CATALOG, entry.name, dataclasses.replace(entry, size="1.8 MB"))
    with pytest.raises(DownloadFailed) as error:
        pretrained.get("sact-cifar10-resnet32", tmp_path, progress=False, log=quiet)
    assert str(error.value) == (f"{mirror.url('/sact-models/cifar10_resnet_5_sact_1e-2.tar.gz')} announces {len(official)} bytes "
                                f"(0.0 MB); the authors' README publishes 1.8 MB for cifar10_resnet_5_sact_1e-2.tar.gz: not the "
                                "published file, nothing was kept")
    assert listing(tmp_path) == []


def test_official_address_without_a_size_is_checked_after(official, mirror, tmp_path, monkeypatch):
    entry = pretrained.CATALOG["sact-cifar10-resnet32"]
    monkeypatch.setitem(pretrained.CATALOG, entry.name, dataclasses.replace(entry, size="1.8 MB"))
    mirror.no_length = True
    with pytest.raises(pretrained.FetchFailed, match=rf"sent {len(official)} bytes; the authors' README publishes 1.8 MB"):
        pretrained.get("sact-cifar10-resnet32", tmp_path, progress=False, log=quiet)
    assert listing(tmp_path) == []


# ------------------------------------------------------------------------------------------
# Bad archives: truncated, members outside the folder, links, devices (one line, nothing left)
# ------------------------------------------------------------------------------------------


def test_truncated_archive(mirror, tmp_path, monkeypatch):
    """A mirror announcing (and sending) a cut archive: its size checks out, gzip's does not."""
    entry = pretrained.CATALOG["sact-cifar10-resnet32"]
    monkeypatch.setitem(pretrained.CATALOG, entry.name, dataclasses.replace(entry, model="sact_resnet14"))
    data = make_archive()
    for cut in (len(data) - 4, len(data) // 2, 100):  # the trailer's length only; half; in the first member
        mirror.files["/short.tar.gz"] = data[:cut]
        out = tmp_path / f"cut-{cut}"
        with pytest.raises(ImportFailed) as error:
            pretrained.get("sact-cifar10-resnet32", out, mirror.url("/short.tar.gz"), progress=False, log=quiet)
        assert re.fullmatch(r"cifar10_resnet_5_sact_1e-2\.tar\.gz is not a complete tar archive \(.+\): it was cut short or is damaged; "
                            r"nothing was unpacked \(the downloaded archive was removed\)", str(error.value)), str(error.value)
        assert listing(out) == []
    local = tmp_path / "short.tar.gz"
    local.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImportFailed, match=r"^short.tar.gz is not a complete tar archive"):
        pretrained.get("sact-cifar10-resnet32", tmp_path / "local", str(local), progress=False, log=quiet)
    assert listing(tmp_path / "local") == [] and local.stat().st_size == len(data) // 2  # the user's file is left alone


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = b"evil", link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE and data is not None else 0
    return info, data if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize("extra,message", [
    (member("../evil"), "member '../evil' would be written outside the target folder ('..'): refused, nothing was unpacked"),
    (member("top/../../evil"), "member 'top/../../evil' would be written outside the target folder ('..'): refused"),
    (member("/tmp/ponderscope-evil"), "member '/tmp/ponderscope-evil' has an absolute name (it would be written outside the target folder)"),
    (member("cifar10_resnet_5_sact_1e-2/link", tarfile.SYMTYPE, link="../../evil"),
     "member 'cifar10_resnet_5_sact_1e-2/link' is a symbolic link (to '../../evil'): refused (only files and folders are unpacked)"),
    (member("cifar10_resnet_5_sact_1e-2/hard", tarfile.LNKTYPE, link="/etc/passwd"),
     "member 'cifar10_resnet_5_sact_1e-2/hard' is a hard link (to '/etc/passwd'): refused"),
    (member("cifar10_resnet_5_sact_1e-2/null", tarfile.CHRTYPE), "member 'cifar10_resnet_5_sact_1e-2/null' is a device: refused"),
    (member("cifar10_resnet_5_sact_1e-2/fifo", tarfile.FIFOTYPE), "member 'cifar10_resnet_5_sact_1e-2/fifo' is a FIFO: refused"),
    (member("cifar10_resnet_5_sact_1e-2/checkpoint"), "member 'cifar10_resnet_5_sact_1e-2/checkpoint' appears twice: refused"),
    (member("C:\\evil"), "member 'C:\\\\evil' has a backslash, a NUL or a drive in its name: refused"),
])
def test_hostile_members_refuse_the_archive(mirror, tmp_path, extra, message):
    mirror.files["/hostile.tar.gz"] = make_archive(extra=[extra])
    out = tmp_path / "deep" / "dir"
    with pytest.raises(ImportFailed) as error:
        pretrained.get("sact-cifar10-resnet32", out, mirror.url("/hostile.tar.gz"), progress=False, log=quiet)
    assert str(error.value).startswith("cifar10_resnet_5_sact_1e-2.tar.gz: " + message), str(error.value)
    assert str(error.value).endswith("(the downloaded archive was removed)")
    assert listing(out) == []
    assert not (tmp_path / "evil").exists() and not (tmp_path / "deep" / "evil").exists() and not Path("/tmp/ponderscope-evil").exists()


def test_decompression_bomb_is_refused(tmp_path):
    info, _ = member("cifar10_resnet_5_sact_1e-2/zeros")
    info.size = 40 << 20
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    source = tmp_path / "bomb.tar.gz"
    source.write_bytes(buffer.getvalue())
    assert source.stat().st_size < (1 << 20)
    with pytest.raises(ImportFailed, match=r"^bomb.tar.gz: its members hold over 42 MB, more than 20 times the archive's size"):
        import_checkpoint("sact-tf", source, tmp_path / "out", "sact_resnet14")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.tar.gz"]


def test_is_archive():
    assert archive.is_archive(FIXTURES / "cifar_sact" / "model.ckpt-0.index") is False
    assert archive.is_archive(FIXTURES / "cifar_sact") is False
    assert archive.is_archive(FIXTURES / "cifar_sact" / "model.ckpt-0") is False  # a prefix, not a file


# ------------------------------------------------------------------------------------------
# A full disk: while downloading, unpacking, writing the checkpoint (one line, nothing left)
# ------------------------------------------------------------------------------------------


class _WrappedFile:
    """A real file whose `write` a subclass changes; everything else is the file's."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def __getattr__(self, name):
        return getattr(self.handle, name)


class _FullAfter(_WrappedFile):
    """A file whose writes fail with ENOSPC once `budget[0]` bytes are spent (the bytes that fit are written)."""

    def __init__(self, handle, budget, path):
        super().__init__(handle)
        self.budget, self.path = budget, path

    def write(self, data):
        if len(data) > self.budget[0]:
            self.handle.write(data[: self.budget[0]])
            self.budget[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        self.budget[0] -= len(data)
        return self.handle.write(data)


def full_disk(after: int, which=lambda path: True):
    """An `open` whose files (those `which` picks) run out of space after `after` bytes in all."""
    budget = [after]

    def open_file(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        return _FullAfter(handle, budget, path) if any(c in mode for c in "wax") and which(Path(path)) else handle

    return open_file


@pytest.mark.parametrize("where", ["download", "unpack"])
def test_full_disk(official, tmp_path, where):
    which = (lambda p: p.name.endswith(".part")) if where == "download" else (lambda p: not p.name.endswith(".part"))
    with pytest.raises(DiskFull) as error:
        pretrained.get("sact-cifar10-resnet32", tmp_path, progress=False, open_file=full_disk(20_000, which), log=quiet)
    if where == "download":
        assert str(error.value) == (f"no space left on the disk of {DOWNLOADS(tmp_path)} while downloading cifar10_resnet_5_sact_1e-2.tar.gz "
                                    f"(0.0 MB written); it needs {len(official) / 1e6:.1f} MB for the archive and about as much again "
                                    "twice to unpack and convert it. The partial download was removed: nothing was kept")
    else:
        assert str(error.value) == (f"no space left on the disk of {tmp_path} to unpack cifar10_resnet_5_sact_1e-2.tar.gz (0.0 MB "
                                    "unpacked when it ran out); nothing was kept")
    assert listing(tmp_path) == []


def test_full_disk_announced_before_a_byte(official, tmp_path, monkeypatch):
    import ponderscope.importers.download as download

    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DiskFull, match=r"^no space left on the disk of .* \(0\.0 MB written\); it needs 0\.0 MB for the archive"):
        pretrained.get("sact-cifar10-resnet32", tmp_path, progress=False, log=quiet)
    assert listing(tmp_path) == []


def test_full_disk_writing_the_checkpoint(official, tmp_path, monkeypatch):
    """safetensors reports a full disk as its own error ("... (os error 28)"): one line too."""
    import ponderscope.importers.common as common
    from safetensors import SafetensorError

    def save_checkpoint(model, path, card):
        Path(path, "model.safetensors.tmp").write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(common, "save_checkpoint", save_checkpoint)
    with pytest.raises(DiskFull) as error:
        pretrained.get("sact-cifar10-resnet32", tmp_path, progress=False, log=quiet)
    assert str(error.value) == f"no space left on the disk of {tmp_path} to write sact-cifar10-resnet32: nothing was kept"
    assert listing(tmp_path) == []


def _tmpfs_available() -> bool:
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _tmpfs_available(), reason="no user namespace to mount a small tmpfs in (unshare -rm)")
@pytest.mark.parametrize("size,no_length,stage", [
    ("256k", False, "the announced size does not fit"),
    ("256k", True, "ENOSPC while downloading"),
    ("640k", False, "ENOSPC while unpacking"),
])
def test_real_full_disk(mirror, tmp_path, size, no_length, stage):
    """The command itself on a real, tiny disk (a tmpfs in a user namespace): one line, exit 1,
    nothing left on that disk."""
    data = make_archive("imagenet_sact", "imagenet_101_sact_5e-3")
    assert 256 * 1024 < len(data) < 640 * 1024 < 2 * len(data)
    mirror.files["/imagenet_101_sact_5e-3.tar.gz"] = data
    mirror.no_length = no_length
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f'mount -t tmpfs -o size={size} none "$1" || exit 99; '
              '"$2" -m ponderscope pretrained get sact-imagenet-resnet101 --url "$3" --out "$1/models" --no-progress; '
              'echo "rc=$?"; cd "$1" && find . | sort')
    run = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(disk), sys.executable, mirror.url("/imagenet_101_sact_5e-3.tar.gz")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env=dict(os.environ, PONDERSCOPE_MODELS=str(tmp_path / "unused")))
    assert run.stdout.splitlines() == ["rc=1", ".", "./models"], (run.stdout, run.stderr)
    error = run.stderr.strip().splitlines()[-1]
    if stage == "ENOSPC while unpacking":
        assert re.fullmatch(rf"ponderscope pretrained get: no space left on the disk of {disk}/models to unpack "
                            r"imagenet_101_sact_5e-3\.tar\.gz \(0\.[0-2] MB unpacked when it ran out\); nothing was kept", error), error
    else:
        assert error.startswith(f"ponderscope pretrained get: no space left on the disk of {disk}/models/.sact-imagenet-resnet101.download "
                                "while downloading imagenet_101_sact_5e-3.tar.gz ("), error
        assert error.endswith("The partial download was removed: nothing was kept"), error
        if no_length:
            assert "it needs the archive's size" in error
        else:
            assert f"it needs {len(data) / 1e6:.1f} MB for the archive" in error


# ------------------------------------------------------------------------------------------
# The progress bar, an interrupted run, a complete .part, a second run at once
# ------------------------------------------------------------------------------------------


def test_progress_bar_on_stderr(official, tmp_path, capsys):
    from ponderscope.cli import main

    main(["pretrained", "get", "sact-cifar10-resnet32", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == f"serve it with: ponderscope serve --checkpoints {tmp_path}"
    bar = [line for line in re.split(r"[\r\n]", captured.err) if line.startswith("cifar10_resnet_5_sact_1e-2.tar.gz:")]
    assert bar and "100%" in bar[-1] and f"{len(official) / 1024:.1f}k/{len(official) / 1024:.1f}k" in bar[-1], captured.err


class _Interrupt(_WrappedFile):
    """A file whose first write stops after `after` bytes with a Ctrl-C."""

    def __init__(self, handle, after):
        super().__init__(handle)
        self.after = after

    def write(self, data):
        self.handle.write(data[: self.after])
        raise KeyboardInterrupt


def test_ctrl_c_keeps_the_part_and_the_next_run_continues(official, mirror, tmp_path, monkeypatch, capsys):
    def open_file(path, mode="r"):
        handle = open(path, mode)
        return _Interrupt(handle, 3_000) if str(path).endswith(".part") else handle

    with pytest.raises(KeyboardInterrupt):
        pretrained.get("sact-cifar10-resnet32", tmp_path, progress=False, open_file=open_file, log=quiet)
    part = DOWNLOADS(tmp_path) / "cifar10_resnet_5_sact_1e-2.tar.gz.part"
    assert part.read_bytes() == official[:3_000]
    target = pretrained.get("sact-cifar10-resnet32", tmp_path, progress=False, log=quiet)
    assert mirror.requests[-1][1] == "bytes=3000-"
    assert_imported_computes_their_logits(target)
    # the command line says it in one line
    from ponderscope.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrained, "get", interrupted)
    with pytest.raises(SystemExit) as error:
        main(["pretrained", "get", "sact-cifar10-resnet32"])
    assert str(error.value) == ("ponderscope pretrained get: interrupted; what was downloaded is kept in "
                                f"{os.environ['PONDERSCOPE_MODELS']}/.sact-cifar10-resnet32.download/, and the same command continues from it")


def test_a_complete_part_is_finished_without_downloading_again(official, mirror, tmp_path):
    url = mirror.url("/sact-models/cifar10_resnet_5_sact_1e-2.tar.gz")
    DOWNLOADS(tmp_path).mkdir()
    (DOWNLOADS(tmp_path) / "cifar10_resnet_5_sact_1e-2.tar.gz.part").write_bytes(official)
    (DOWNLOADS(tmp_path) / "cifar10_resnet_5_sact_1e-2.tar.gz.part.json").write_text(json.dumps({"url": url, "total": len(official)}))
    target = pretrained.get("sact-cifar10-resnet32", tmp_path, progress=False, log=quiet)
    assert mirror.requests == [("/sact-models/cifar10_resnet_5_sact_1e-2.tar.gz", f"bytes={len(official)}-", None)]
    assert_imported_computes_their_logits(target)
    assert len(listing(tmp_path)) == 3


@pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks")
def test_a_second_run_at_once_does_not_write_the_same_part(official, mirror, tmp_path):
    import fcntl

    url = mirror.url("/sact-models/cifar10_resnet_5_sact_1e-2.tar.gz")
    DOWNLOADS(tmp_path).mkdir()
    part = DOWNLOADS(tmp_path) / "cifar10_resnet_5_sact_1e-2.tar.gz.part"
    part.write_bytes(official[:1000])
    (DOWNLOADS(tmp_path) / "cifar10_resnet_5_sact_1e-2.tar.gz.part.json").write_text(json.dumps({"url": url, "total": len(official)}))
    with open(part, "ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(DownloadFailed, match=r"^another download is writing .*\.part \(a second `ponderscope pretrained get` of it\?\)"):
            pretrained.get("sact-cifar10-resnet32", tmp_path, progress=False, log=quiet)
    assert part.read_bytes() == official[:1000]


# ------------------------------------------------------------------------------------------
# The published ImageNet SACT ResNet-101's layout, narrow: the README's screenshot's model
# ------------------------------------------------------------------------------------------


def sact_imagenet101_variables(divisor: int = 8, seed: int = 7) -> dict[str, np.ndarray]:
    """Random values for every variable of the authors' ImageNet SACT ResNet-101 (names and layout
    from their graph: tests/fixtures/sact_tf/manifests.json), every width / `divisor` but the stem's
    64 channels (their ImageNet stem is fixed); halting biases 0, so that units halt at several depths."""
    from tests.test_import_sact import random_variables

    def narrow(name: str, shape: list[int]) -> list[int]:
        if name.startswith(("resnet_v2/conv1/", "resnet_v2/block1/unit_1/bottleneck_v2/preact/")):
            return shape
        out = [d // divisor if d % 64 == 0 else d for d in shape]
        if name.startswith("resnet_v2/block1/unit_1/bottleneck_v2/") and name.endswith(("conv1/weights", "shortcut/weights")):
            out[2] = 64  # their input: the stem's 64 channels
        return out

    manifest = json.loads((FIXTURES / "manifests.json").read_text())["imagenet_sact_101"]
    return random_variables({name: narrow(name, shape) for name, shape in manifest.items()}, seed=seed, halting_bias=0.0)


def sact_imagenet101_archive(variables: dict[str, np.ndarray], folder: Path) -> bytes:
    """`variables` as the authors publish imagenet_101_sact_5e-3.tar.gz: that folder with
    `checkpoint` and model.ckpt-NNN.{index,data-00000-of-00001}, written in TF's format by
    tests/tf_bundle_writer.py (its CRC-32C the importer's table-driven one: the same values, faster)."""
    import tests.tf_bundle_writer as writer
    from ponderscope.importers.tf_bundle import _masked_crc32c

    top = folder / "imagenet_101_sact_5e-3"
    top.mkdir(parents=True)
    original = writer.masked_crc32c
    writer.masked_crc32c = _masked_crc32c
    try:
        writer.write_tensors(top / "model.ckpt-1000000", variables)
    finally:
        writer.masked_crc32c = original
    (top / "checkpoint").write_text('model_checkpoint_path: "/home/them/logs/train/model.ckpt-1000000"\n'
                                    'all_model_checkpoint_paths: "/home/them/logs/train/model.ckpt-1000000"\n')
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(top, arcname=top.name)
    return buffer.getvalue()


def test_published_imagenet_layout_imports_as_the_catalog_names_it(mirror, tmp_path):
    """sact-imagenet-resnet101 from a mirror, with the catalog's own --model (sact_resnet101): the
    authors' ResNet-101 layout (3, 4, 23, 3 bottleneck units, 1001 classes), computing what a
    re-statement of their graph (tests/sact_tf_reference.py) computes on the raw variables."""
    from tests.sact_tf_reference import Graph

    variables = sact_imagenet101_variables()
    data = sact_imagenet101_archive(variables, tmp_path / "build")
    mirror.files["/imagenet_101_sact_5e-3.tar.gz"] = data
    target = pretrained.get("sact-imagenet-resnet101", tmp_path / "models", mirror.url("/imagenet_101_sact_5e-3.tar.gz"),
                            progress=False, log=quiet)
    card = json.loads((target / "card.json").read_text())
    assert card["model"] == "sact_resnet" and card["model_kwargs"]["units_per_block"] == [3, 4, 23, 3]
    assert card["model_kwargs"]["depth"] == 101 and card["model_kwargs"]["widths"] == [8, 16, 32, 64]
    assert len(card["classes"]) == 1001 and card["classes"][0] == "background" and card["dataset"] == "imagenet"
    assert card["preprocess"]["native_max_side"] == 640
    assert card["source"]["converted"]["unpacked"] == "imagenet_101_sact_5e-3.tar.gz: imagenet_101_sact_5e-3/model.ckpt-1000000"
    model = models.load_checkpoint(target)
    images = np.random.default_rng(3).uniform(-1, 1, (1, 96, 128, 3)).astype(np.float32)
    expected = Graph(variables, "imagenet", "sact")(images)
    with torch.no_grad():
        trace = model.trace(nchw(images))
    logits = expected["logits"].numpy()
    np.testing.assert_allclose(trace.logits.numpy(), logits, rtol=1e-3, atol=1e-3 * np.abs(logits).max())
    depths = set()
    for block, results in zip(trace.blocks, expected["blocks"].values()):
        np.testing.assert_array_equal(block.units.numpy(), results["num_units"].numpy())
        depths |= set(np.unique(results["num_units"].numpy()).tolist())
    assert len(depths) >= 2


def test_missing_file_and_no_server_are_one_line(mirror, tmp_path):
    with pytest.raises(DownloadFailed) as error:
        pretrained.get("sact-cifar10-resnet32", tmp_path, mirror.url("/nothing.tar.gz"), progress=False, log=quiet)
    assert str(error.value) == f"{mirror.url('/nothing.tar.gz')} answers 404 Not Found: nothing was downloaded"
    assert listing(tmp_path) == []
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadFailed) as error:
        pretrained.get("sact-cifar10-resnet32", tmp_path, f"http://127.0.0.1:{port}/x.tar.gz", progress=False, attempts=2,
                       backoff_s=0, log=quiet)
    assert re.fullmatch(rf"the download of http://127\.0\.0\.1:{port}/x\.tar\.gz stopped: \[Errno 111\] Connection refused "
                        r"\(tried 2 times\); nothing was kept", str(error.value)), str(error.value)
    assert listing(tmp_path) == []
    with pytest.raises(pretrained.FetchFailed, match=r"^--url ftp://x/y: give an http:// or https:// address, a file:// URL or a local file$"):
        pretrained.get("sact-cifar10-resnet32", tmp_path, "ftp://x/y", progress=False, log=quiet)
    with pytest.raises(pretrained.FetchFailed, match=rf"^--url {re.escape(str(tmp_path))}/none\.tar\.gz: no such file$"):
        pretrained.get("sact-cifar10-resnet32", tmp_path, str(tmp_path / "none.tar.gz"), progress=False, log=quiet)
    (tmp_path / "sact-cifar10-resnet32").mkdir()
    (tmp_path / "sact-cifar10-resnet32" / "notes.txt").write_text("mine")
    with pytest.raises(pretrained.FetchFailed, match="sact-cifar10-resnet32 exists and is not a checkpoint folder: move it away or give another --out"):
        pretrained.get("sact-cifar10-resnet32", tmp_path, mirror.url("/nothing.tar.gz"), progress=False, log=quiet)
    assert listing(tmp_path) == ["sact-cifar10-resnet32", "sact-cifar10-resnet32/notes.txt"]


class _StubbornRanges(BaseHTTPRequestHandler):
    """Answers every request with 206, resuming somewhere else than asked (or with no Content-Range)."""
    requests = 0
    content_range = "bytes 5-9/10"

    def do_GET(self):
        type(self).requests += 1
        self.send_response(206)
        if self.content_range:
            self.send_header("Content-Range", self.content_range)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"abcde")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("content_range", ["bytes 5-9/10", None])
def test_a_server_resuming_at_the_wrong_place_ends_the_download(tmp_path, content_range):
    """A 206 at another byte than asked is a try like any other (no endless start-over loop); a 206
    without a usable Content-Range is one clear failure."""
    from ponderscope.importers.download import download

    handler = type("Handler", (_StubbornRanges,), {"requests": 0, "content_range": content_range})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(DownloadFailed, match="tried 3 times" if content_range else "without a usable Content-Range"):
            download(f"http://127.0.0.1:{server.server_address[1]}/a.tar.gz", tmp_path / "a.tar.gz", progress=False, attempts=3,
                     backoff_s=0.0, log=quiet)
    finally:
        server.shutdown()
    assert handler.requests == (3 if content_range else 1)
    assert list(tmp_path.rglob("*")) == []  # nothing half-written
