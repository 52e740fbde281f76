"""`lesionlocator batch` on real Dask clusters: an embedded LocalCluster, a separately started
`dask scheduler` + `dask worker` pair on 127.0.0.1, a worker killed mid-study, a batch killed and
resumed. Every study must end done or failed with a reason; none lost, none duplicated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from napari_lesionlocator.batch import EngineConfig, check_study_output, load_manifest, open_client, run_batch
from napari_lesionlocator.batch.cohort import write_cohort
from napari_lesionlocator.batch.manifest import input_fingerprint
from napari_lesionlocator.batch.pipeline import DONE_MARKER
from napari_lesionlocator.batch.tables import read_table_csv

pytestmark = pytest.mark.slow

CLASSICAL = EngineConfig("classical")
DASK = str(Path(sys.executable).with_name("dask"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    write_cohort(root, 4, timepoints=2, half_extent_mm=(25.0, 35.0, 35.0))
    return root


def _manifest(cohort: Path, folder: Path, n: int) -> Path:
    """A CSV manifest of the cohort's first ``n`` studies."""
    from napari_lesionlocator.batch.manifest import write_manifest_csv

    return write_manifest_csv(load_manifest(cohort)[:n], folder / f"first{n}.csv")


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "napari_lesionlocator.cli", "batch", *map(str, args),
                             "--engine", "classical", "--dashboard-address", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _finish(proc, timeout=300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _check_outputs(out: Path, specs, statuses: dict[str, str]) -> None:
    """Every done/skipped study validates; nothing else (no staging debris, no duplicate) is in studies/."""
    folders = sorted(p.name for p in (out / "studies").iterdir())
    assert folders == sorted(s.study_id for s in specs if statuses[s.study_id] in ("done", "skipped"))
    for s in specs:
        if statuses[s.study_id] in ("done", "skipped"):
            fp = input_fingerprint(s, CLASSICAL.result_settings())
            assert check_study_output(out / "studies" / s.study_id, fp) == ("done", "")
    rows = read_table_csv(out / "lesions.csv")
    keys = [(r["study_id"], r["timepoint"], r["lesion_id"]) for r in rows]
    assert len(keys) == len(set(keys))  # one row per lesion per timepoint
    assert {r["study_id"] for r in rows} == {s for s, st in statuses.items() if st in ("done", "skipped")}


def test_local_cluster_runs_the_cohort_loads_the_engine_once_per_worker_and_resumes(cohort, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    specs = load_manifest(cohort)[:3]
    # one corrupt study among them: it fails with its reason, the others go on
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "fu.nii.gz").write_bytes(Path(specs[0].timepoints[1].image).read_bytes()[:400])
    broken = type(specs[0])(**{**specs[0].__dict__, "study_id": "broken",
                               "timepoints": (specs[0].timepoints[0], type(specs[0].timepoints[0])(
                                   str(bad / "fu.nii.gz")))})
    specs = [*specs, broken]
    out = tmp_path / "out"
    seen = []
    with open_client(workers=2, dashboard_address="127.0.0.1:0") as (client, info):
        assert info.kind == "local" and info.workers == 2 and info.dashboard.startswith("http://127.0.0.1:")
        report = run_batch(specs, out, client, CLASSICAL, progress=False, on_outcome=seen.append)
        status = {s["study_id"]: s for s in report.studies}
        assert [status[s.study_id]["status"] for s in specs] == ["done"] * 3 + ["failed"]
        assert status["broken"]["reason"].startswith("bad input") and "fu.nii.gz" in status["broken"]["reason"]
        # the engine was built once per worker process and reused by every study it ran
        done = [o for o in seen if o["status"] == "done"]
        by_pid: dict[int, set] = {}
        for o in done:
            by_pid.setdefault(o["pid"], set()).add(o["engine_id"])
            assert o["engine_loads"] == 1
        assert 1 <= len(by_pid) <= 2 and all(len(ids) == 1 for ids in by_pid.values())
        assert sum(len([o for o in done if o["pid"] == pid]) for pid in by_pid) == 3
        _check_outputs(out, specs, {k: v["status"] for k, v in status.items()})
        lesions = pq.read_table(out / "lesions.parquet").to_pylist()
        assert len(lesions) == len(read_table_csv(out / "lesions.csv")) == sum(len(o["rows"]) for o in done)
        assert all(0.0 <= r["dice"] <= 1.0 for r in lesions)
        studies = pq.read_table(out / "studies.parquet").to_pylist()
        assert [r["status"] for r in studies] == ["done"] * 3 + ["failed"]
        assert all(r["seconds"] > 0 for r in studies[:3])
        # rerun: finished studies are skipped, the failed one is tried again (and fails again)
        again = run_batch(specs, out, client, CLASSICAL, progress=False)
    assert [s["status"] for s in again.studies] == ["skipped"] * 3 + ["failed"]
    assert len(again.lesions) == len(report.lesions)


def _kill_first_busy_worker(client, stop: threading.Event, killed: dict, delay: float = 1.0) -> None:
    """SIGKILL the first worker process that is running a study, ``delay`` s into it."""
    try:
        pids = client.run(os.getpid)
        while not stop.is_set():
            if any(client.processing().values()):
                time.sleep(delay)  # mid-study
                busy = {addr: keys for addr, keys in client.processing().items() if keys}
                if busy:
                    addr, keys = next(iter(busy.items()))
                    killed.update(addr=addr, pid=pids[addr], keys=[str(k) for k in keys])
                    os.kill(pids[addr], signal.SIGKILL)
                    return
            time.sleep(0.05)
    except Exception as exc:  # noqa: BLE001 - reported by the test
        killed["error"] = repr(exc)


@pytest.mark.parametrize("allowed_failures", [3, 0])
def test_a_worker_killed_mid_study_loses_and_duplicates_nothing(cohort, tmp_path, allowed_failures):
    import dask

    specs = load_manifest(cohort)[:3]
    out = tmp_path / "out"
    killed: dict = {}
    seen = []
    with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}), \
            open_client(workers=2, dashboard_address=None) as (client, _info):
        stop = threading.Event()
        killer = threading.Thread(target=_kill_first_busy_worker, args=(client, stop, killed), daemon=True)
        killer.start()
        try:
            report = run_batch(specs, out, client, CLASSICAL, progress=False, on_outcome=seen.append)
        finally:
            stop.set()
            killer.join(30)
    assert "pid" in killed, f"no worker was killed: {killed}"
    # the studies the dead worker held (running, or queued on it by the scheduler)
    victims = {s.study_id for s in specs if any(f"study-{s.study_id}-" in k for k in killed["keys"])}
    assert victims
    status = {s["study_id"]: s for s in report.studies}
    assert sorted(status) == sorted(s.study_id for s in specs)  # every study reported, once
    assert len(seen) == len(specs)
    if allowed_failures:
        assert all(s["status"] == "done" for s in report.studies)  # retried on another (or the restarted) worker
        for o in seen:
            if o["study_id"] in victims:
                assert o["pid"] != killed["pid"]
    else:
        for v in victims:
            assert status[v]["status"] == "failed" and "worker died" in status[v]["reason"]
        assert all(s["status"] == "done" for s in report.studies if s["study_id"] not in victims)
    _check_outputs(out, specs, {k: v["status"] for k, v in status.items()})
    if not allowed_failures:  # a rerun redoes only the studies the dead worker had
        with open_client(workers=1, dashboard_address=None) as (client, _info):
            again = run_batch(specs, out, client, CLASSICAL, progress=False)
        assert {s["study_id"]: s["status"] for s in again.studies} == {
            s.study_id: "done" if s.study_id in victims else "skipped" for s in specs}


def test_a_separately_started_scheduler_and_worker_pair_runs_the_batch(cohort, tmp_path):
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(sched_file)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        procs.append(subprocess.Popen([DASK, "worker", address, "--nworkers", "1", "--nthreads", "1", "--host",
                                       "127.0.0.1", "--no-dashboard", "--name", "solo"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        out = tmp_path / "out"
        manifest = _manifest(cohort, tmp_path, 2)
        code, log = _finish(_cli(manifest, "-o", out, "--scheduler", address))
        assert code == 0, log
        assert f"scheduler {address}" in log and "2 done" in log
        rows = read_table_csv(out / "studies.csv")
        assert [r["status"] for r in rows] == ["done"] * 2 and {r["worker"] for r in rows} == {"solo"}
        _check_outputs(out, load_manifest(manifest), {r["study_id"]: r["status"] for r in rows})
        code, log = _finish(_cli(manifest, "-o", out, "--scheduler", address))
        assert code == 0 and "2 skipped" in log, log
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_batch_killed_mid_run_resumes_redoing_only_what_is_missing(cohort, tmp_path):
    out = tmp_path / "out"
    manifest = _manifest(cohort, tmp_path, 3)
    specs = load_manifest(manifest)
    proc = _cli(manifest, "-o", out, "--workers", "1", start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "studies").glob(f"*/{DONE_MARKER}")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the command, its cluster and its worker, mid-study
    proc.communicate(timeout=60)
    finished = {p.parent.name for p in (out / "studies").glob(f"*/{DONE_MARKER}")}
    assert 1 <= len(finished) < len(specs)
    code, log = _finish(_cli(manifest, "-o", out, "--workers", "2"))
    assert code == 0, log
    rows = {r["study_id"]: r for r in read_table_csv(out / "studies.csv")}
    assert {k for k, r in rows.items() if r["status"] == "skipped"} == finished
    assert {k for k, r in rows.items() if r["status"] == "done"} == {s.study_id for s in specs} - finished
    _check_outputs(out, specs, {k: r["status"] for k, r in rows.items()})
    # half-written results are never taken as done: a truncated file, a missing marker
    first, second = sorted(rows)[:2]
    victim = next((out / "studies" / first).glob("*_tp1_lesions.nii.gz"))
    victim.write_bytes(victim.read_bytes()[:40])
    (out / "studies" / second / DONE_MARKER).unlink()
    (out / "studies" / f".{first}.tmp-leftover").mkdir()  # a dead worker's staging folder
    code, log = _finish(_cli(manifest, "-o", out, "--workers", "2"))
    assert code == 0, log
    rows = {r["study_id"]: r for r in read_table_csv(out / "studies.csv")}
    assert rows[first]["status"] == "done" and "checksum" in rows[first]["reason"]
    assert rows[second]["status"] == "done" and "interrupted" in rows[second]["reason"]
    assert all(r["status"] == "skipped" for k, r in rows.items() if k not in (first, second))
    _check_outputs(out, specs, {k: r["status"] for k, r in rows.items()})


def test_gpu_workers_get_one_gpu_each_and_studies_need_the_gpu_resource(cohort, tmp_path, monkeypatch):
    """The per-GPU cluster's placement (no GPU is used: the classical engine ignores the device)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    specs = load_manifest(cohort)[:2]
    with open_client(gpus_per_worker=1, dashboard_address=None) as (client, info):
        assert info.kind == "local-gpu" and info.workers == 2
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(seen.values()) == ["0", "1"]
        resources = [w["resources"] for w in client.scheduler_info()["workers"].values()]
        assert resources == [{"GPU": 1}, {"GPU": 1}]
        report = run_batch(specs, tmp_path / "out", client, CLASSICAL, gpus_per_task=1, progress=False)
    assert [s["status"] for s in report.studies] == ["done", "done"]


def test_a_cluster_without_gpu_workers_is_refused_for_gpu_studies():
    from distributed import LocalCluster

    from napari_lesionlocator.core.errors import EngineError

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            pytest.raises(EngineError, match="--resources GPU=1"), \
            open_client(scheduler=cluster.scheduler_address, gpus_per_worker=1):
        pass
