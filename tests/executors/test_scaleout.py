"""Scale-out: each factor once per fill across workers, fillers that share work, dask done
right, remote stores with ``storage_options`` (SPEC "Scale-out and remote stores")."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import (
    FeatureFactors,
    LoggedFactors,
    SlowLoggedFn,
    brute_top_k,
    indexed_data,
    integer_data,
    logged_blocks,
    logged_calls,
)

import infl_array as ia
from infl_array.engine.block_engine import BlockEngine
from infl_array.storage.claims import ClaimBook
from infl_array.storage.store import InfluenceStore
from infl_array.storage.zarr_compat import write_key

N_TEST, N_TRAIN, BLOCK = 24, 40, (6, 10)
TESTS = Path(__file__).resolve().parents[1]


def factor_array(store: Path | str, log: Path, **kw: Any) -> ia.InfluenceArray:
    test, train = indexed_data(N_TEST, seed=1), indexed_data(N_TRAIN, seed=2)
    return ia.InfluenceArray.create(
        store, LoggedFactors(str(log)), test=test, train=train, block_shape=BLOCK, **kw
    )


def expected_factor_matrix(tmp_path: Path) -> np.ndarray:
    model = LoggedFactors(str(tmp_path / "reference.log"))
    test, train = indexed_data(N_TEST, seed=1), indexed_data(N_TRAIN, seed=2)
    return np.asarray(model.test_factors(*test) @ model.train_factors(*train).T)


def times_computed(log: Path, kind: str, n: int) -> np.ndarray:
    """How many times each sample's factors were computed (from the model's call log)."""
    counts = np.zeros(n, dtype=int)
    for k, start, stop, _ in logged_calls(str(log)) if log.exists() else []:
        if k == kind:
            counts[start:stop] += 1
    return counts


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as lc,
        distributed.Client(lc) as client,
    ):
        yield client


# ---------------------------------------------------------------------- factors once per fill
@pytest.mark.parametrize("where", ["here", "workers=2", "dask"])
def test_each_factor_is_computed_once_per_fill(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    log = tmp_path / "factors.log"
    arr = factor_array(tmp_path / "store", log)
    if where == "here":
        written = arr.fill(progress=False)
    elif where == "workers=2":
        written = arr.fill(progress=False, workers=2)
    else:
        written = arr.fill(progress=False, client=request.getfixturevalue("cluster"))
    assert written == 16
    np.testing.assert_array_equal(times_computed(log, "train", N_TRAIN), np.ones(N_TRAIN))
    np.testing.assert_array_equal(times_computed(log, "test", N_TEST), np.ones(N_TEST))
    # the array's stats count what every worker computed
    stats = arr.stats
    # in this process the train blocks form one column group: the first block (which sizes
    # the tiles), then the other three in one call; a worker computes its task's blocks
    calls = 2 if where == "here" else N_TRAIN // BLOCK[1]
    assert stats.blocks_computed == 16 and stats.train_factors == calls
    np.testing.assert_allclose(np.asarray(arr), expected_factor_matrix(tmp_path), atol=1e-6)


def test_a_second_fill_of_a_partly_filled_store_reads_stored_factors(tmp_path: Path) -> None:
    log = tmp_path / "factors.log"
    arr = factor_array(tmp_path / "store", log)
    arr[:6, :]  # one block row: every train factor and one block of test factors
    log.unlink()
    test, train = indexed_data(N_TEST, seed=1), indexed_data(N_TRAIN, seed=2)
    reopened = ia.open(tmp_path / "store", LoggedFactors(str(log)), test=test, train=train)
    assert reopened.fill(progress=False, workers=2) == 12
    assert times_computed(log, "train", N_TRAIN).sum() == 0  # all read from the store
    np.testing.assert_array_equal(times_computed(log, "test", N_TEST)[6:], np.ones(N_TEST - 6))


# ---------------------------------------------------------------------- fillers share work
FILLER = """
import json, os, sys, time
import infl_array as ia
from helpers import SlowLoggedFn
store, log, go = sys.argv[1:4]
while not os.path.exists(go):
    time.sleep(0.002)
arr = ia.open(store, fn=SlowLoggedFn(log, delay=0.02))
print(json.dumps({"written": arr.fill(progress=False)}))
"""


@pytest.mark.parametrize("block", [(8, 8), (4, 4)])  # 100 blocks claimed one by one; 400 in
def test_four_concurrent_fillers_share_the_work(tmp_path: Path, block: tuple[int, int]) -> None:
    store, log, go = tmp_path / "store", tmp_path / "blocks.log", tmp_path / "go"
    shape = (80, 80)  # claim units of 2 x 3 blocks (ClaimUnits)
    n_blocks = (80 // block[0]) * (80 // block[1])
    ia.InfluenceArray.from_function(store, SlowLoggedFn(str(log)), shape=shape, block_shape=block)
    paths = [str(TESTS), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    procs = [
        subprocess.Popen([sys.executable, "-c", FILLER, str(store), str(log), str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        for _ in range(4)
    ]  # fmt: skip
    time.sleep(0.5)
    go.touch()
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    written = [json.loads(out.strip().splitlines()[-1])["written"] for out in outputs]
    computed = Counter((r, c) for r, c, _ in logged_blocks(str(log)))
    assert len(computed) == n_blocks and sum(written) == n_blocks
    duplicates = sum(computed.values()) - n_blocks
    assert duplicates < 0.05 * n_blocks, f"{duplicates} of {n_blocks} blocks computed twice"
    assert len({pid for *_, pid in logged_blocks(str(log))}) >= 2  # the work was shared
    expected = np.add.outer(np.arange(80) * 1000.0, np.arange(80))
    np.testing.assert_array_equal(np.asarray(ia.open(store)), expected)
    assert ia.open(store).verify() == []


def test_claims_expire_and_dead_local_owners_are_noticed_at_once(tmp_path: Path) -> None:
    ia.InfluenceArray.from_function(
        tmp_path / "s", SlowLoggedFn(str(tmp_path / "log")), shape=(4, 4), block_shape=(2, 2)
    )
    zstore = InfluenceStore.open(tmp_path / "s").matrix.zarr_store
    now = [1_000_000.0]  # a clock the test moves: no claim depends on how fast this runs

    def book() -> ClaimBook:
        return ClaimBook(zstore, "influence/claims/", ttl_s=60.0, clock=lambda: now[0])

    threads = _heartbeats()
    mine, other = book(), book()
    assert mine.try_claim("a") and not other.try_claim("a")
    assert _heartbeats() == threads + 1  # the holder refreshes its claims in the background
    now[0] += 45.0
    mine.refresh()  # one heartbeat
    now[0] += 45.0  # past the first expiry, not past the refreshed one
    assert not other.try_claim("a")
    now[0] += 61.0  # no refresh for longer than the ttl: expired
    assert other.try_claim("a")
    mine.close()  # leaves the claim "a" alone: it is other's now
    assert not book().try_claim("a")
    other.close()
    assert _heartbeats() == threads  # closed books stop refreshing

    def plant(name: str, owner: str, expires_in: float) -> None:
        content = json.dumps({"owner": owner, "expires": now[0] + expires_in}).encode()
        write_key(zstore, f"influence/claims/{name}", content)

    late = book()
    plant("b", "another-machine:1:x", 30.0)  # a live filler elsewhere
    assert not late.try_claim("b")
    now[0] += 31.0  # it stopped refreshing (killed): the claim expires, never blocks forever
    assert late.try_claim("b")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    plant("c", f"{socket.gethostname()}:{dead.stdout.strip()}:x", 3600.0)
    assert late.try_claim("c")  # a killed filler on this machine is noticed without waiting
    late.close()
    assert not list((tmp_path / "s" / "influence" / "claims").iterdir())  # all released


def _heartbeats() -> int:
    """Live claim heartbeat threads (``ClaimBook.close`` ends its book's thread)."""
    return sum(t.name == "infl-array-claims" for t in threading.enumerate())


# ---------------------------------------------------------------------- process pool faults
def test_a_killed_pool_worker_says_what_was_kept_and_fill_resumes(tmp_path: Path) -> None:
    store, log = tmp_path / "store", tmp_path / "blocks.log"
    fn = SlowLoggedFn(str(log), delay=0.05, kill_once=str(tmp_path / "killed"))
    arr = ia.InfluenceArray.from_function(store, fn, shape=(40, 40), block_shape=(8, 8))
    with pytest.raises(BrokenProcessPool) as info:
        arr.fill(progress=False, workers=2)
    note = "\n".join(getattr(info.value, "__notes__", []))
    assert "a worker process died" in note and "call fill() again" in note
    kept = len(ia.open(store).computed.nonzero()[0])
    assert f"({kept} of 25 in all)" in note
    again = ia.open(store, fn=SlowLoggedFn(str(log)))
    assert again.fill(progress=False) == 25 - kept
    expected = np.add.outer(np.arange(40) * 1000.0, np.arange(40))
    np.testing.assert_array_equal(np.asarray(ia.open(store)), expected)


# ---------------------------------------------------------------------- dask
def test_to_dask_graph_holds_the_engine_once(tmp_path: Path, cluster: Any) -> None:
    log = tmp_path / "factors.log"
    arr = factor_array(tmp_path / "store", log)
    darr = arr.to_dask()
    values = list(dict(darr.__dask_graph__()).values())
    assert sum(isinstance(v, BlockEngine) for v in values) == 1
    assert len(values) == 16 + 1
    engine_bytes = len(pickle.dumps(arr))  # an array pickles as its engine
    assert len(pickle.dumps(darr.__dask_graph__())) < engine_bytes + 16 * 1024
    got = darr.compute(scheduler=cluster.get)
    np.testing.assert_allclose(got, expected_factor_matrix(tmp_path), atol=1e-6)
    # each worker holds one engine: its factor memo (and the stored factors) serve every task
    assert times_computed(log, "train", N_TRAIN).max() <= 2
    assert times_computed(log, "test", N_TEST).max() <= 2


def test_dask_fill_survives_losing_every_worker(tmp_path: Path, cluster: Any) -> None:
    store, log = tmp_path / "store", tmp_path / "blocks.log"
    fn = SlowLoggedFn(str(log), delay=0.05)
    arr = ia.InfluenceArray.from_function(store, fn, shape=(64, 64), block_shape=(8, 8))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            arr.fill(progress=False, client=cluster)
        except BaseException as exc:  # reported below
            errors.append(exc)

    filler = threading.Thread(target=run)
    filler.start()
    deadline = time.monotonic() + 60
    while len(logged_blocks(str(log))) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    pids = cluster.run(os.getpid)
    for pid in pids.values():
        os.kill(pid, 9)  # every worker at once; their nannies start new ones
    assert len(logged_blocks(str(log))) < 64  # killed mid-fill
    filler.join(timeout=240)
    assert not filler.is_alive() and errors == []
    expected = np.add.outer(np.arange(64) * 1000.0, np.arange(64))
    np.testing.assert_array_equal(np.asarray(ia.open(store)), expected)
    cluster.wait_for_workers(2, timeout=60)
    assert not set(cluster.run(os.getpid).values()) & set(pids.values())


def test_dask_fill_error_cancels_outstanding_tasks(tmp_path: Path, cluster: Any) -> None:
    store, log = tmp_path / "store", tmp_path / "blocks.log"
    fn = SlowLoggedFn(str(log), delay=0.05, fail_at=(0, 0))
    arr = ia.InfluenceArray.from_function(store, fn, shape=(64, 64), block_shape=(8, 8))
    with pytest.raises(ValueError, match="fails on purpose") as info:
        arr.fill(progress=False, client=cluster)
    assert "call fill() again" in "\n".join(getattr(info.value, "__notes__", []))
    deadline = time.monotonic() + 10
    while any(cluster.processing().values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(cluster.processing().values())  # nothing left running for this fill
    time.sleep(0.3)
    assert len(logged_blocks(str(log))) < 64  # the rest was cancelled, not computed


# ---------------------------------------------------------------------- S3 (local server)
@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, Any]]:
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}
    import s3fs

    s3fs.S3FileSystem(**options).mkdir("infl-bucket")
    yield options
    server.stop()


def test_s3_store_with_storage_options(tmp_path: Path, s3_server: dict[str, Any]) -> None:
    url = "s3://infl-bucket/digits"
    log = tmp_path / "blocks.log"
    arr = ia.InfluenceArray.from_function(
        url, SlowLoggedFn(str(log)), shape=(30, 40), block_shape=(10, 10),
        storage_options=s3_server,
    )  # fmt: skip
    assert arr.fill(progress=False) == 12
    expected = np.add.outer(np.arange(30) * 1000.0, np.arange(40))
    reopened = ia.open(url, storage_options=s3_server)
    np.testing.assert_array_equal(np.asarray(reopened), expected)
    assert reopened.computed.all() and reopened.verify() == []
    assert reopened.stored_bytes() > 0
    assert "stored 0 B" not in repr(reopened) and "ratio n/a" not in repr(reopened)
    with pytest.raises(FileExistsError, match="s3://infl-bucket/digits"):
        ia.InfluenceArray.from_function(
            url, SlowLoggedFn(str(log)), shape=(30, 40), block_shape=(10, 10),
            storage_options=s3_server,
        )  # fmt: skip
    # a fresh handle reading a few rows computes nothing and reads the right blocks
    np.testing.assert_array_equal(ia.open(url, storage_options=s3_server)[5:15, ::7],
                                  expected[5:15, ::7])  # fmt: skip


def test_s3_store_grows_by_an_append_and_reopens_with_the_grown_data(
    s3_server: dict[str, Any],
) -> None:
    """append_train and append_test on S3: segment records, resized arrays, partial blocks and
    top-k bases all go through the remote store; the grown store reopens and reports clean."""
    url, opts = "s3://infl-bucket/grown", {"storage_options": s3_server}
    test, train = integer_data(5, 3, 0), integer_data(7, 3, 1)
    more_train, more_test = integer_data(4, 3, 2), integer_data(2, 3, 3)
    arr = ia.InfluenceArray.create(
        url, FeatureFactors(), test=test, train=train, block_shape=(2, 3), **opts
    )
    arr.fill(progress=False)
    arr.top_k_array(3).fill(progress=False)
    arr.append_train(more_train)
    arr.append_test(more_test)
    grown_test = tuple(np.concatenate(p) for p in zip(test, more_test, strict=True))
    grown_train = tuple(np.concatenate(p) for p in zip(train, more_train, strict=True))
    full = grown_test[0] @ grown_train[0].T
    again = ia.open(url, FeatureFactors(), test=grown_test, train=grown_train, **opts)
    assert [str(s) for s in again.segments] == ["test segment 1 (5:7)", "train segment 1 (7:11)"]
    np.testing.assert_array_equal(again[:], full)
    np.testing.assert_array_equal(again.top_k_array(3).indices[:], brute_top_k(full, 3, 1, True)[1])
    with pytest.raises(ia.StaleCacheError, match=r"train segment 1 \(7:11\)"):
        changed = grown_train[0].copy()
        changed[8] += 1
        ia.open(url, FeatureFactors(), test=grown_test, train=(changed, grown_train[1]), **opts)
    reopened = ia.open(url, **opts)
    assert reopened.shape == (7, 11) and reopened.computed.all()
    report = reopened.store_report()
    assert report.ok, report
    assert reopened.verify() == []


def test_a_misspelt_storage_option_is_named_with_the_url(s3_server: dict[str, Any]) -> None:
    url = "s3://infl-bucket/typo"
    ia.InfluenceArray.from_function(url, np.add.outer, shape=(4, 4), storage_options=s3_server)
    typo = {**s3_server, "endpoint_ur": s3_server["endpoint_url"]}
    del typo["endpoint_url"]
    for attempt in (
        lambda: ia.open(url, storage_options=typo),
        lambda: ia.InfluenceArray.from_function(
            "s3://infl-bucket/typo2", np.add.outer, shape=(4, 4), storage_options=typo
        ),
    ):
        with pytest.raises(TypeError, match=r"'s3://infl-bucket/typo2?'.*'endpoint_ur'") as info:
            attempt()
        assert "Did you mean 'endpoint_url'?" in str(info.value)
        assert "damaged" not in str(info.value)


def test_missing_credentials_name_the_url(
    s3_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    url, options = "s3://infl-bucket/nocreds", {"endpoint_url": s3_server["endpoint_url"]}
    with pytest.raises(PermissionError, match=r"no credentials to reach 's3://infl-bucket/noc"):
        ia.InfluenceArray.from_function(url, np.add.outer, shape=(4, 4), storage_options=options)
    with pytest.raises(PermissionError, match=r"no credentials to reach 's3://infl-bucket/noc"):
        ia.open(url, storage_options=options)


def test_storage_options_bad_input_is_named(tmp_path: Path) -> None:
    fn = SlowLoggedFn(str(tmp_path / "log"))
    with pytest.raises(TypeError, match="storage_options must be a dict"):
        ia.open("memory://infl/bad", storage_options="anon")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="storage_options must be a dict"):
        ia.InfluenceArray.from_function(
            "memory://infl/bad", fn, shape=(4, 4), block_shape=(2, 2),
            storage_options=[("anon", True)],  # type: ignore[arg-type]
        )  # fmt: skip
    with pytest.raises(TypeError, match="apply to URL stores"):
        ia.InfluenceArray.from_function(
            tmp_path / "local", fn, shape=(4, 4), block_shape=(2, 2), storage_options={"anon": 1}
        )
    assert not (tmp_path / "local").exists()
