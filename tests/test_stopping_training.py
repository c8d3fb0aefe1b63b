"""Stopping the long loops other than the cleaning solve: prior training, the segmenter, calibration, evaluation.

In the core: a ``stop`` that turns True ends each loop within one step (counted in calls of the stop, not in
seconds); a stopped training run leaves a checkpoint of the step reached and a rerun resumes from it. On the
command line: a real SIGINT/SIGTERM ends the command with 130/143 and one line saying what it left behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import generate, write_generated
from safetensors import safe_open
from safetensors.torch import load_file

from rgi_core.calibration import CalibrationConfig, calibrate, calibrate_fpr
from rgi_core.detectors.segmenter import LearnedMap, SegmenterConfig
from rgi_core.evaluation.labelled import Labelled, evaluate_labelled
from rgi_core.io.images import encode_png
from rgi_core.priors import save_prior
from rgi_core.priors.nets import ArchSpec
from rgi_core.priors.training import STATE_FILE, TrainConfig, TrainingStopped, train_prior
from rgi_core.stopping import Cancelled

REPO = Path(__file__).resolve().parents[1]
ARCH = ArchSpec(resolution=16, channels=1, latent_dim=8, width=8, max_channels=16)


class StopAfter:
    """A stop that says False ``n`` times, then True; counts how often it was asked."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.n


def _images(n: int = 6, size: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((1, size, size), dtype=np.float32) for _ in range(n)]


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(arch=ARCH, steps=6, batch_size=4, sample_every=100, checkpoint_every=100, **kw)


def _saved_step(work: Path) -> int:
    with safe_open(str(work / STATE_FILE), "pt") as f:
        return int(f.metadata()["step"])


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The weights of an uninterrupted 6-step run."""
    return load_file(str(train_prior(_images(), _cfg(), tmp_path_factory.mktemp("straight"))))


def _resume(work: Path) -> tuple[Path, list[int]]:
    steps: list[int] = []
    path = train_prior(_images(), _cfg(), work, log_every=1, progress=lambda s, total, losses: steps.append(s))
    return path, steps


def test_a_stopped_training_run_checkpoints_its_step_and_resumes_to_the_same_weights(tmp_path, straight):
    """CPU training is deterministic (test_training.py: same seed, same weights, also across a resume), so the
    stopped and resumed run must end with the uninterrupted run's weights, bit for bit."""
    work = tmp_path / "w"
    stop = StopAfter(3)
    with pytest.raises(TrainingStopped, match="step 3 of 6") as info:
        train_prior(_images(), _cfg(), work, stop=stop)
    assert isinstance(info.value, Cancelled) and info.value.step == 3 and stop.calls == 4
    assert _saved_step(work) == 3 and not (work / "prior.safetensors").exists()
    path, steps = _resume(work)
    assert steps == [4, 5, 6]  # from the stopped step on, not from 0
    final = load_file(str(path))
    assert final.keys() == straight.keys() and all(torch.equal(final[k], straight[k]) for k in final)


def test_a_stop_before_the_first_step_leaves_a_resumable_state(tmp_path, straight):
    work = tmp_path / "w"
    with pytest.raises(TrainingStopped, match="step 0 of 6"):
        train_prior(_images(), _cfg(), work, stop=lambda: True)
    assert _saved_step(work) == 0
    path, steps = _resume(work)
    assert steps == [1, 2, 3, 4, 5, 6]
    assert all(torch.equal(v, straight[k]) for k, v in load_file(str(path)).items())


def test_a_run_killed_while_writing_its_checkpoint_resumes_from_the_last_complete_one(tmp_path, monkeypatch, straight):
    """The second checkpoint's write dies half way (as a hard kill would): the first stays the state file, the
    partial temp file is never read, and the rerun resumes from step 2."""
    import rgi_core.priors.training as training

    real_save, writes = training.save_file, []

    def dies_on_the_second_write(tensors, filename, metadata=None):
        writes.append(filename)
        if len(writes) == 2:
            Path(filename).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"half")  # a torn safetensors header
            raise KeyboardInterrupt
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(training, "save_file", dies_on_the_second_write)
    work = tmp_path / "w"
    with pytest.raises(KeyboardInterrupt):
        train_prior(_images(), TrainConfig(**{**_cfg().__dict__, "checkpoint_every": 2}), work)
    monkeypatch.undo()
    assert _saved_step(work) == 2 and (work / "state.tmp").exists()  # the torn file lies beside it, unread
    path, steps = _resume(work)
    assert steps == [3, 4, 5, 6]
    assert all(torch.equal(v, straight[k]) for k, v in load_file(str(path)).items())


def test_segmenter_training_stops_within_a_step():
    stop = StopAfter(2)
    with pytest.raises(Cancelled, match="segmenter training stopped at step 2 of 1000"):
        LearnedMap.fit(torch.rand(8, 1, 16, 16), torch.rand(4, 1, 16, 16), SegmenterConfig(steps=1000, batch=2),
                       stop=stop)
    assert stop.calls == 3


@pytest.mark.parametrize("texture", [False, True])
def test_calibrate_stops_within_a_solver_step(tiny_prior, texture):
    clean = generate(tiny_prior, 4, seed=3)
    for n in (0, 5):  # before the first solve, and inside one
        stop = StopAfter(n)
        with pytest.raises(Cancelled):
            calibrate(tiny_prior, clean, CalibrationConfig(iterations=1000, n_init=4, rounds=6), stop=stop,
                      texture_clean=clean if texture else None)
        assert stop.calls == n + 1


@pytest.mark.parametrize("lam", [None, 0.05])  # None: in fit_lam's solves; 0.05: in cleaning the clean images
def test_calibrate_fpr_stops_within_a_solver_step(tiny_prior, lam):
    images = list(generate(tiny_prior, 4, seed=3))
    stop = StopAfter(3)
    with pytest.raises(Cancelled):
        calibrate_fpr(tiny_prior, images, 0.1, CalibrationConfig(iterations=1000, n_init=4, rounds=6), lam=lam,
                      stop=stop)
    assert stop.calls == 4


def test_evaluate_labelled_stops_between_batches_and_inside_solves(tiny_prior):
    x = generate(tiny_prior, 4, seed=3)
    items = [Labelled(f"i{k}", x[k], torch.zeros((1, 32, 32), dtype=torch.bool)) for k in range(4)]
    for n in (0, 3):  # before the first batch, and inside the first solve
        stop = StopAfter(n)
        with pytest.raises(Cancelled):
            evaluate_labelled(tiny_prior, items, ("mse", "rgi"), batch_size=2, stop=stop, iterations=1000, n_init=4)
        assert stop.calls == n + 1


@pytest.mark.parametrize("command", ["calibrate", "evaluate"])
def test_cli_calibrate_and_evaluate_stop_without_writing(tmp_path, tiny_prior, monkeypatch, capsys, command):
    """A stop asked in the process (no signal: exit code 1) ends the command inside its first solve; it writes
    no output and says so in one line."""
    from flows import stopping
    from flows.cli import main
    from rgi_core.evaluation.labelled import export_labelled

    prior = save_prior(tmp_path / "p.safetensors", tiny_prior.generator, tiny_prior.discriminator)
    x = generate(tiny_prior, 2, seed=3)
    export_labelled([Labelled(f"i{k}", x[k], torch.zeros((1, 32, 32), dtype=torch.bool)) for k in range(2)],
                    str(tmp_path / "data"))
    stop = StopAfter(3)
    monkeypatch.setattr(stopping, "stop_requested", stop)
    out = tmp_path / "out"
    common = ["--prior", str(prior), "--out", str(out), "--iterations", "1000", "--n-init", "4", "--device", "cpu"]
    args = [command, str(tmp_path / "data"), *common] + (["--methods", "rgi"] if command == "evaluate" else [])
    assert main(args) == 1
    assert stop.calls == 4 and not out.exists()
    left = f"{out} not written" if command == "calibrate" else "no report written"
    assert capsys.readouterr().err.splitlines()[-1] == f"rgi {command}: stopped (stop requested); {left}"


# ------------------------------------------------------------------------ the command line, real signals


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, stdout=f,
                                stderr=subprocess.STDOUT)


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, log.read_text()):
        assert proc.poll() is None, f"exited with {proc.returncode} before {pattern!r}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {pattern!r} within {timeout} s:\n{log.read_text()}"
        time.sleep(0.1)


def _interrupt(proc: subprocess.Popen, sig: signal.Signals, log: Path) -> tuple[int, list[str]]:
    """Send ``sig``, wait (at most 20 s) for the exit; returns the exit code and the lines rgi wrote."""
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"still running 20 s after {sig.name}:\n{log.read_text()}") from None
    return rc, log.read_text().splitlines()


@pytest.mark.integration  # subprocesses that train
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_train_prior_stops_on_a_signal_and_the_same_command_resumes(tmp_path, sig, code):
    data = tmp_path / "clean"
    data.mkdir()
    for i, im in enumerate(_images(4, size=32)):
        (data / f"{i}.png").write_bytes(encode_png(im))
    out, log = tmp_path / "p.safetensors", tmp_path / "log"

    def args(steps: int) -> list[str]:
        return ["train-prior", str(data), "--out", str(out), "--resolution", "32", "--latent-dim", "8", "--width",
                "8", "--max-channels", "16", "--batch-size", "4", "--steps", str(steps), "--log-every", "1",
                "--checkpoint-every", "1000000", "--sample-every", "1000000", "--threads", "1", "--encoder-steps", "0"]

    proc = _start(args(1_000_000), log)
    _wait_for(log, r"step 3/", proc)
    rc, lines = _interrupt(proc, sig, log)
    assert rc == code, "\n".join(lines)
    stopped = [ln for ln in lines if ln.startswith("rgi train-prior: stopped")]
    assert len(stopped) == 1 and lines[-1] == stopped[0], "\n".join(lines)
    m = re.fullmatch(rf"rgi train-prior: stopped at step (\d+) \({sig.name}\); checkpoint in (.+); run the same "
                     r"command to resume", stopped[0])
    assert m and m.group(2) == str(tmp_path / "p.train"), stopped[0]
    step = int(m.group(1))
    assert step >= 3 and _saved_step(tmp_path / "p.train") == step and not out.exists()
    if sig != signal.SIGINT:
        return  # the checkpoint is the same whichever signal asked; resuming from it is checked once

    again = subprocess.run([sys.executable, "-m", "flows.cli", *args(step + 2)], cwd=REPO, capture_output=True,
                           text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr
    logged = [int(s) for s in re.findall(r"^step (\d+)/", again.stderr, re.M)]
    assert logged == [step + 1, step + 2]  # resumed at the stopped step, not at 0
    assert out.exists()


@pytest.mark.integration  # a subprocess that trains a segmenter
def test_cli_calibrate_prior_stopped_leaves_the_prior_byte_for_byte(tmp_path, tiny_prior):
    path = save_prior(tmp_path / "p.safetensors", tiny_prior.generator, tiny_prior.discriminator)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    clean = write_generated(tiny_prior, tmp_path / "clean", 4, seed=2)
    log = tmp_path / "log"
    proc = _start(["calibrate-prior", str(path), str(clean), "--images-n", "4", "--iterations", "10", "--rounds", "1",
                   "--segmenter-steps", "1000000", "--segmenter-crops", "8", "--device", "cpu"], log)
    _wait_for(log, r"segmenter step 0:", proc)
    rc, lines = _interrupt(proc, signal.SIGINT, log)
    assert rc == 130, "\n".join(lines)
    assert lines[-1] == "rgi calibrate-prior: stopped (SIGINT); the prior is unchanged", "\n".join(lines)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "log", "p.safetensors"]  # no temp file either
