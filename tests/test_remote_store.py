"""Stores on fsspec URLs: ingest to s3:// (a local moto server on 127.0.0.1), read and stream it like a local store.

Nothing leaves the machine: the S3 endpoint is a moto server in this process, bound to 127.0.0.1, with dummy
credentials; the endpoint reaches s3fs through --storage-options or OMICSWEEP_STORAGE_OPTIONS.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from omicsweep.datasets import CellBatches, Store, fit_transform_on_train, resolve_dataset
from omicsweep.datasets import remote
from omicsweep.datasets.remote import STORAGE_OPTIONS_ENV

BUCKET = "omicsweep-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(endpoint URL, s3fs filesystem) of a moto S3 server on 127.0.0.1 with one empty bucket."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    import s3fs

    patch = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("aws")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(home / "config"),
                       "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        patch.setenv(key, value)  # never a real account's credentials or profile
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", STORAGE_OPTIONS_ENV):
        patch.delenv(key, raising=False)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        _, port = server.get_host_and_port()
        endpoint = f"http://127.0.0.1:{port}"
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        fs.mkdir(BUCKET)
        yield endpoint, fs
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
        patch.undo()


def _objects(fs, prefix: str) -> list[str]:
    fs.invalidate_cache()
    return fs.find(f"{BUCKET}/{prefix}") if fs.exists(f"{BUCKET}/{prefix}") else []


def _ingest(cli, pbmc_h5ad, out, *extra):
    return cli("ingest", pbmc_h5ad, "--label-col", "bulk_labels", "--raw", "--out", out, *extra)


def _epoch(store: Store, **kwargs) -> list[tuple[np.ndarray, np.ndarray]]:
    transform = fit_transform_on_train(store)
    batches = CellBatches(store, "train", batch_size=64, transform=transform, shuffle=True, seed=3, **kwargs)
    return [(x.numpy(), y.numpy()) for x, y in batches]


@pytest.mark.slow
def test_ingest_to_s3_streams_the_same_batches_as_a_local_store(s3, cli, pbmc_h5ad, tmp_path, monkeypatch):
    endpoint, fs = s3
    options = json.dumps({"endpoint_url": endpoint})
    url = f"s3://{BUCKET}/pbmc.zarr"
    code, stdout, stderr = _ingest(cli, pbmc_h5ad, url, "--storage-options", options)
    assert code == 0, stdout + stderr
    assert f"wrote {url}" in stdout
    assert fs.exists(f"{BUCKET}/pbmc.zarr/zarr.json") and fs.exists(f"{BUCKET}/pbmc.zarr/X/indptr/zarr.json")
    code, stdout, stderr = _ingest(cli, pbmc_h5ad, tmp_path / "pbmc.zarr")
    assert code == 0, stdout + stderr

    local, remote_store = Store(tmp_path / "pbmc.zarr"), Store(url, storage_options={"endpoint_url": endpoint})
    assert remote_store.path == url and remote_store.fingerprint == local.fingerprint
    assert remote_store.classes == local.classes and remote_store.shape == local.shape
    np.testing.assert_array_equal(remote_store.split_indices("train"), local.split_indices("train"))
    np.testing.assert_array_equal(remote_store.genes(), local.genes())
    expected, streamed = _epoch(local), _epoch(remote_store)
    assert len(expected) == len(streamed) > 1
    for (x, y), (rx, ry) in zip(expected, streamed):
        np.testing.assert_array_equal(rx, x)
        np.testing.assert_array_equal(ry, y)

    # without explicit options: the environment variable (what Ray workers inherit), and resolve_dataset
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, options)
    name, resolved = resolve_dataset(url + "/")
    assert (name, resolved) == ("pbmc", url)
    assert Store(resolved).fingerprint == local.fingerprint
    code, stdout, stderr = cli("datasets", "show", url)
    assert code == 0 and local.fingerprint in stdout, stdout + stderr


@pytest.mark.parametrize("fail_at", ["body", "root"])
def test_a_failed_upload_leaves_no_root_metadata_and_removes_what_it_uploaded(
    s3, cli, pbmc_h5ad, monkeypatch, fail_at
):
    endpoint, fs = s3
    real_put = remote._put_files
    calls = []

    def flaky(filesystem, pairs):
        calls.append(len(pairs))
        if fail_at == "body":
            real_put(filesystem, pairs[:5])  # some files land, then the connection drops
            raise OSError("connection reset by peer")
        if len(calls) == 2:  # the second call uploads the root zarr.json
            raise OSError("connection reset by peer")
        real_put(filesystem, pairs)

    monkeypatch.setattr(remote, "_put_files", flaky)
    prefix = f"broken-{fail_at}.zarr"
    code, _, stderr = _ingest(cli, pbmc_h5ad, f"s3://{BUCKET}/{prefix}", "--storage-options",
                              json.dumps({"endpoint_url": endpoint}))
    assert code == 2 and "upload failed" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert calls[0] > 5  # the body is many files
    assert _objects(fs, prefix) == []  # no zarr.json, and nothing else left behind
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps({"endpoint_url": endpoint}))
    code, _, stderr = cli("datasets", "show", f"s3://{BUCKET}/{prefix}")
    assert code == 2 and "store not found" in stderr, stderr


def test_existing_remote_store_needs_overwrite_and_bad_options_are_one_line(s3, cli, pbmc_h5ad):
    endpoint, fs = s3
    options = json.dumps({"endpoint_url": endpoint})
    url = f"s3://{BUCKET}/twice.zarr"
    assert _ingest(cli, pbmc_h5ad, url, "--storage-options", options)[0] == 0
    code, _, stderr = _ingest(cli, pbmc_h5ad, url, "--storage-options", options)
    assert code == 2 and "already exists" in stderr, stderr
    fs.touch(f"{BUCKET}/twice.zarr/stale-object")  # --overwrite replaces everything under the prefix
    code, stdout, stderr = _ingest(cli, pbmc_h5ad, url, "--storage-options", options, "--overwrite")
    assert code == 0, stdout + stderr
    assert f"{BUCKET}/twice.zarr/stale-object" not in _objects(fs, "twice.zarr")
    assert f"{BUCKET}/twice.zarr/zarr.json" in _objects(fs, "twice.zarr")
    assert Store(url, storage_options={"endpoint_url": endpoint}).n_cells == 700
    for bad in ("{not json", "[1, 2]"):
        code, _, stderr = _ingest(cli, pbmc_h5ad, f"s3://{BUCKET}/other.zarr", "--storage-options", bad)
        assert code == 2 and "--storage-options" in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_file_url_stores_need_no_server(cli, pbmc_h5ad, tmp_path):
    url = (tmp_path / "via-url.zarr").as_uri()
    code, stdout, stderr = _ingest(cli, pbmc_h5ad, url)
    assert code == 0, stdout + stderr
    assert (tmp_path / "via-url.zarr" / "zarr.json").exists()
    via_url, via_path = Store(url), Store(tmp_path / "via-url.zarr")
    assert via_url.fingerprint == via_path.fingerprint and isinstance(via_url.path, str)
    for (x, y), (ux, uy) in zip(_epoch(via_path, prefetch=False), _epoch(via_url, prefetch=False)):
        np.testing.assert_array_equal(ux, x)
        np.testing.assert_array_equal(uy, y)
    code, _, stderr = cli("datasets", "show", (tmp_path / "absent.zarr").as_uri())
    assert code == 2 and "store not found" in stderr, stderr
