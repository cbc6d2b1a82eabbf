"""The gpubp command run as a subprocess, the way a user runs it."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gpubp import load_model
from gpubp.backend import cuda_status

from .conftest import REPO


def gpubp(*args, cwd=REPO, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "gpubp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_train_with_no_arguments_reaches_95_percent_on_digits():
    result = gpubp("train")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0].startswith("device: ")
    assert sum(line.startswith("epoch ") for line in out) == 30
    last = out[-1]
    assert last.startswith("test accuracy: 0.9") and float(last.split()[-1]) >= 0.95


def test_train_writes_the_model_and_the_plot(tmp_path):
    model, plot = tmp_path / "m.npz", tmp_path / "curves.png"
    result = gpubp("train", "--epochs", "3", "--hidden", "32,16", "--activation", "tanh",
                   "--optimizer", "nesterov", "--schedule", "cosine", "--dtype", "float64",
                   "--out", str(model), "--plot", str(plot), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "epoch " not in result.stdout
    net, extra = load_model(model, backend="cpu")
    assert net.sizes == [64, 32, 16, 10] and net.dtype == np.float64
    assert extra["classes"].tolist() == list(range(10)) and extra["input_mean"].shape == (64,)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_on_a_csv_file(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    X = np.eye(3)[y] * 4 + rng.normal(size=(150, 3))
    path = tmp_path / "d.csv"
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header="a,b,c,label", comments="")
    result = gpubp("train", "--dataset", str(path), "--epochs", "20", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "120 train / 30 test samples, 3 features, 3 classes" in result.stdout
    assert float(result.stdout.splitlines()[-1].split()[-1]) >= 0.9


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--epochs", "0"], "argument --epochs: epochs must be an int in the range [1, inf), got 0"),
        (["train", "--lr", "-1"], "argument --lr: lr must be a float in the range (0.0, inf), got -1"),
        (["train", "--hidden", "12,x"], "hidden must be a list of ints in the range [1, inf), got '12,x'"),
        (["train", "--activation", "swish"], "activation must be a str among {'relu', "),
        (["train", "--dataset", "nowhere.csv"], "no such data set or file"),
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "--out", "/no/such/folder/m.npz"], "folder /no/such/folder does not exist"),
        (["train", "--val-fraction", "1.5"],
         "argument --val-fraction: validation_fraction must be a float in the range [0.0, 1.0), got 1.5"),
        (["bench", "--pairs", "0"], "argument --pairs: pairs must be an int in the range [1, inf), got 0"),
        ([], "the following arguments are required"),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(args, fragment):
    assert_one_line_error(gpubp(*args), fragment)


def test_corrupt_data_file_gives_one_line_and_status_2(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    assert_one_line_error(gpubp("train", "--dataset", str(path)), "not a readable .npz file")


@pytest.mark.skipif(cuda_status().usable, reason="a GPU is usable here")
def test_cuda_requested_without_a_gpu():
    assert_one_line_error(gpubp("train", "--device", "cuda"), "device 'cuda' is not usable")


def test_info_reports_versions_and_cuda():
    result = gpubp("info")
    assert result.returncode == 0, result.stderr
    assert "gpubp 0.1.0" in result.stdout and "numpy " in result.stdout
    assert "cuda usable: " in result.stdout and "auto device: " in result.stdout
    assert "bfloat16 (products and saved activations" in result.stdout and "--tf32" in result.stdout
    graphs = [line for line in result.stdout.splitlines() if line.startswith("cuda graphs (--cuda-graph): ")]
    assert len(graphs) == 1, result.stdout


@pytest.mark.skipif(shutil.which("gpubp") is None, reason="the gpubp script is not installed on PATH")
def test_installed_console_script():
    result = subprocess.run(["gpubp", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "gpubp 0.1.0"


def test_plot_without_matplotlib_fails_before_training(monkeypatch, tmp_path, capsys):
    from gpubp import cli

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    status = cli.main(["train", "--plot", str(tmp_path / "curves.png")])
    err = capsys.readouterr()
    assert status == 2 and "epoch " not in err.out
    assert err.err.strip() == "error: gpubp train: --plot: plotting needs matplotlib: pip install 'gpubp[plot]'"


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("nan.csv", "label,a,b\n0,1,nan\n1,2,3\n", "NaN or infinity"),
        ("ragged.csv", "0,1,2\n1,2\n", "columns"),
        ("text.csv", "label,a\n0,x\n", "could not convert"),
        ("empty.csv", "", "empty file"),
        ("one.csv", "label,a\n0,1\n", "cannot split"),
    ],
)
def test_bad_data_files_give_one_line_and_status_2(tmp_path, name, content, fragment):
    (tmp_path / name).write_text(content)
    assert_one_line_error(gpubp("train", "--dataset", str(tmp_path / name)), fragment)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--batch-size", "0"], "--batch-size: batch_size must be an int in the range [1, inf), got 0"),
        (["--hidden", "64,0"], "hidden must be a list of ints in the range [1, inf), got [64, 0]"),
        (["--lr", "0"], "--lr: lr must be a float in the range (0.0, inf), got 0"),
        (["--clip-norm", "-1"], "--clip-norm: clip_norm must be a float in the range (0.0, inf) or None, got -1"),
        (["--checkpoint-every", "0"], "checkpoint_every must be an int in the range [1, inf) or None, got 0"),
        (["--checkpoint", "/no/such/folder/c.npz"], "checkpoint must be a file path in an existing folder"),
        (["--seed", "-1"], "--seed: seed must be an int in the range [0, inf) or None, got -1"),
        (["--resume", "/no/such/ckpt.npz"], "no checkpoint at /no/such/ckpt.npz"),
    ],
)
def test_absurd_settings_give_one_line_and_status_2(args, fragment):
    assert_one_line_error(gpubp("train", *args), fragment)


def test_truncated_idx_folder_gives_one_line_and_status_2(tmp_path):
    import gzip

    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big")))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01"))
    assert_one_line_error(gpubp("train", "--dataset", str(tmp_path)), "truncated header")


def test_resume_refuses_a_changed_setting_and_a_model_file(tmp_path):
    ckpt = tmp_path / "c.npz"
    done = gpubp("train", "--epochs", "1", "--checkpoint", str(ckpt), "--quiet")
    assert done.returncode == 0, done.stderr
    assert_one_line_error(gpubp("train", "--resume", str(ckpt), "--hidden", "32"),
                          "--hidden cannot be changed when resuming")
    model = tmp_path / "m.npz"
    assert gpubp("train", "--epochs", "1", "--out", str(model), "--quiet").returncode == 0
    assert_one_line_error(gpubp("train", "--resume", str(model)), "a gpubp model file, not a checkpoint")


def test_stopped_after_k_epochs_and_resumed_from_the_command_line_is_bitwise_equal(tmp_path):
    first = gpubp("train", "--epochs", "3", "--checkpoint", str(tmp_path / "c.npz"), "--quiet", "--seed", "4")
    assert first.returncode == 0, first.stderr
    resumed = gpubp("train", "--resume", str(tmp_path / "c.npz"), "--epochs", "6", "--out", str(tmp_path / "b.npz"),
                    "--quiet")
    whole = gpubp("train", "--epochs", "6", "--out", str(tmp_path / "a.npz"), "--quiet", "--seed", "4")
    assert resumed.returncode == 0 and whole.returncode == 0, resumed.stderr + whole.stderr
    a, _ = load_model(tmp_path / "a.npz", backend="cpu")
    b, _ = load_model(tmp_path / "b.npz", backend="cpu")
    for pa, pb in zip(a.params, b.params):
        np.testing.assert_array_equal(pa, pb)
    from gpubp.checkpoint import read_checkpoint

    history = read_checkpoint(tmp_path / "c.npz").meta["history"]  # the resumed run kept writing here
    assert len(history["train_loss"]) == 6  # continued, not restarted
    assert resumed.stdout.splitlines()[-3:-1] == whole.stdout.splitlines()[-3:-1]  # same test loss and accuracy


def test_a_resumed_run_scales_its_data_as_the_checkpointed_run_did(tmp_path, monkeypatch):
    """The checkpoint keeps the run's standardization (input_mean, input_scale), and a resume
    applies it instead of fitting again: the data and their fingerprint stay those the run
    trained on, however the statistics would be computed now (another number of ranks)."""
    from gpubp import cli
    from gpubp.checkpoint import read_checkpoint
    from sklearn.preprocessing import StandardScaler

    ckpt = tmp_path / "c.npz"
    assert cli.main(["train", "--epochs", "1", "--checkpoint", str(ckpt), "--quiet"]) == 0
    extra = read_checkpoint(ckpt).meta["extra"]
    assert len(extra["input_mean"]) == len(extra["input_scale"]) == 64

    def refuse(*args, **kwargs):
        raise AssertionError("the resumed run fitted its scaler again")

    monkeypatch.setattr(StandardScaler, "fit", refuse)
    monkeypatch.setattr(StandardScaler, "partial_fit", refuse)
    assert cli.main(["train", "--resume", str(ckpt), "--epochs", "2", "--quiet"]) == 0
    assert len(read_checkpoint(ckpt).meta["history"]["train_loss"]) == 2


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two one-epoch checkpoints of gpubp train: "bf16" (bfloat16, hidden 32,16, momentum at lr
    0.05, alpha 0.001) and "tf32" (float32 with --tf32, the other settings their defaults)."""
    from gpubp import cli

    folder = tmp_path_factory.mktemp("checkpoints")
    runs = {"bf16": ["--dtype", "bfloat16", "--hidden", "32,16", "--optimizer", "momentum", "--lr", "0.05",
                     "--alpha", "0.001"],
            "tf32": ["--tf32"]}
    for name, args in runs.items():
        assert cli.main(["train", *args, "--epochs", "1", "--checkpoint", str(folder / f"{name}.npz"),
                         "--quiet"]) == 0
    return folder


def resume(checkpoints, name, args, tmp_path, capsys):
    """gpubp train --resume the checkpoint ``name`` of ``checkpoints`` with ``args`` (writing its
    checkpoint under tmp_path); its status, stdout and stderr."""
    from gpubp import cli

    capsys.readouterr()
    status = cli.main(["train", "--resume", str(checkpoints / f"{name}.npz"), "--checkpoint", str(tmp_path / "c.npz"),
                       "--quiet", *args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(
    "name, args, model",
    [
        ("bf16", [], "64-32-16-10 relu, bfloat16, "),  # not given: the checkpoint's value
        ("bf16", ["--dtype", "bfloat16"], "64-32-16-10 relu, bfloat16, "),
        ("bf16", ["--hidden", "32,16", "--optimizer", "momentum", "--lr", "0.05", "--alpha", "1e-3",
                  "--activation", "relu", "--seed", "0", "--batch-size", "32", "--val-fraction", "0.1",
                  "--test-fraction", "0.2", "--dataset", "digits"], "64-32-16-10 relu, bfloat16, "),
        ("tf32", ["--tf32"], "64-128-10 relu, float32 tf32, "),
        ("tf32", ["--tf32", "--dtype", "float32", "--lr", "0.001"], "64-128-10 relu, float32 tf32, "),
    ],
)
def test_resume_accepts_options_given_with_the_checkpoints_values(checkpoints, name, args, model, tmp_path, capsys):
    """An option given on the command line with the value the checkpoint holds is accepted, even
    where that value is not the option's default (--dtype bfloat16, --tf32) or is (--lr 0.001 for
    adam, --dtype float32)."""
    status, out, err = resume(checkpoints, name, [*args, "--epochs", "1"], tmp_path, capsys)
    assert status == 0, err
    assert model in out


@pytest.mark.parametrize(
    "name, args, holds, given",
    [
        ("bf16", ["--dtype", "float32"], "--dtype bfloat16", "--dtype float32"),
        ("tf32", ["--dtype", "float64"], "--dtype float32", "--dtype float64"),
        ("bf16", ["--tf32"], "no --tf32", "--tf32"),
        ("bf16", ["--hidden", "128"], "--hidden 32,16", "--hidden 128"),
        ("bf16", ["--lr", "0.001"], "--lr 0.05", "--lr 0.001"),
        ("bf16", ["--optimizer", "adam"], "--optimizer momentum", "--optimizer adam"),
        ("tf32", ["--activation", "tanh"], "--activation relu", "--activation tanh"),
        ("tf32", ["--patience", "3"], "no --patience", "--patience 3"),
    ],
)
def test_resume_refuses_an_option_given_with_another_value_naming_both(checkpoints, name, args, holds, given,
                                                                       tmp_path, capsys):
    """An option given with a value other than the checkpoint's is refused, even when the given
    value is the option's default (--dtype float32, --optimizer adam, --activation relu)."""
    status, out, err = resume(checkpoints, name, args, tmp_path, capsys)
    assert status == 2 and "model: " not in out, out + err
    assert len(err.strip().splitlines()) == 1, err
    option = args[0]
    assert f"{option} cannot be changed when resuming: {checkpoints / name}.npz holds {holds}, given {given}" in err


def test_resume_takes_an_explicit_epochs_equal_to_its_default(checkpoints, tmp_path, capsys):
    """--epochs 30 (the default, given) raises the one-epoch run to 30 epochs; left out, the
    checkpoint's total stays."""
    status, out, err = resume(checkpoints, "tf32", ["--epochs", "30"], tmp_path, capsys)
    assert status == 0 and "adam, 30 epochs of batch 32" in out, out + err
    status, out, err = resume(checkpoints, "tf32", [], tmp_path, capsys)
    assert status == 0 and "adam, 1 epochs of batch 32" in out, out + err


def test_resume_accepts_the_data_set_named_by_another_path(tmp_path, monkeypatch, capsys):
    """A checkpoint keeps the data file's absolute path; --dataset naming that file by a relative
    path is the same data set."""
    from gpubp import cli

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    np.savez(tmp_path / "d.npz", X=np.eye(3)[y] * 4 + rng.normal(size=(150, 3)), y=y)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--dataset", "d.npz", "--epochs", "1", "--checkpoint", "c.npz", "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", "c.npz", "--dataset", "./d.npz", "--epochs", "1", "--quiet"]) == 0
    assert cli.main(["train", "--resume", "c.npz", "--dataset", "digits", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--dataset cannot be changed when resuming: c.npz holds --dataset {tmp_path.resolve() / 'd.npz'}, given " \
           "--dataset digits" in err


def test_the_parser_tells_an_option_given_from_one_left_at_its_default():
    """``given`` holds the options on the command line, given with their default value or not;
    the others hold their defaults, typed as a given value would be."""
    from gpubp.cli_parser import build_parser

    args = build_parser().parse_args(["train", "--dtype", "float32", "--tf32", "--hidden", "32,16"])
    assert args.given == {"dtype", "tf32", "hidden"}
    assert (args.dtype, args.tf32, args.hidden, args.epochs, args.activation, args.lr) == \
        ("float32", True, [32, 16], 30, "relu", None)
    assert build_parser().parse_args(["train"]).given == set()


def train_in_process(capsys, *args):
    """``gpubp train ARGS`` run by gpubp.cli.main here: its status, stdout and stderr."""
    from gpubp import cli

    capsys.readouterr()
    status = cli.main(["train", *args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(
    "make, option, name, fragment",
    [
        (lambda d: (d / "adir").mkdir(), "--out", "adir", "--out {p}: it is a folder: name a file in it"),
        (lambda d: (d / "adir").mkdir(), "--plot", "adir", "--plot {p}: it is a folder: name a file in it"),
        (lambda d: (d / "adir").mkdir(), "--checkpoint", "adir",  # (judged by its setting's type, when parsed)
         "argument --checkpoint: checkpoint must be a file path in an existing folder that takes new files (not a folder)"),
        (lambda d: (d / "afile").write_text("x"), "--out", "afile/m.npz", "{d}/afile is a file, not a folder"),
        (lambda d: None, "--out", "", "argument --out: an empty path: name a file"),
        (lambda d: None, "--plot", "", "argument --plot: an empty path: name a file"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_training(tmp_path, capsys, make, option, name, fragment):
    """A folder, an empty path or a path under a file is refused with one line and status 2
    before any training (it was an IsADirectoryError or EBUSY traceback after it, the model lost)."""
    make(tmp_path)
    path = str(tmp_path / name) if name else ""
    status, out, err = train_in_process(capsys, "--epochs", "1", "--hidden", "8", "--quiet", option, path)
    assert status == 2 and out == "", out + err
    assert len(err.strip().splitlines()) == 1, err
    assert fragment.format(p=path, d=tmp_path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"adir", "afile"} & {name.split("/")[0]})


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_output_in_a_folder_that_takes_no_files_is_refused_before_training(capsys):
    status, out, err = train_in_process(capsys, "--epochs", "1", "--quiet", "--out", "/proc/m.npz")
    assert status == 2 and out == "", out + err
    assert err.startswith("error: gpubp train: --out /proc/m.npz: no file can be created in folder /proc ("), err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "args, first, second",
    [
        (["--out", "same.npz", "--plot", "same.npz"], "--out", "--plot"),
        (["--out", "run.npz", "--checkpoint", "./run.npz"], "--out", "--checkpoint"),
        (["--plot", "run.npz", "--checkpoint", "run.npz"], "--plot", "--checkpoint"),
        (["--dataset", "d.npz", "--out", "d.npz"], "--out", "--dataset"),
        (["--dataset", "d.npz", "--checkpoint", "d.npz"], "--checkpoint", "--dataset"),
    ],
)
def test_two_options_naming_the_same_file_are_refused_before_training(tmp_path, monkeypatch, capsys, args, first,
                                                                       second):
    """--out same.npz --plot same.npz replaced the model with a PNG, --checkpoint run.npz --out
    run.npz the checkpoint with a model (and --resume failed); refused, naming both options."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    np.savez("d.npz", X=np.eye(3)[y] * 4 + rng.normal(size=(150, 3)), y=y)
    status, out, err = train_in_process(capsys, "--epochs", "1", "--quiet", *args)
    assert status == 2 and out == "", out + err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{first} and {second} name the same file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


def test_a_resumed_run_refuses_to_write_its_model_over_its_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train_in_process(capsys, "--epochs", "1", "--hidden", "8", "--checkpoint", "c.npz", "--quiet")[0] == 0
    status, out, err = train_in_process(capsys, "--resume", "c.npz", "--epochs", "2", "--out", "c.npz")
    assert status == 2 and "model: " not in out, out + err
    assert "--out and --resume name the same file" in err
    from gpubp.checkpoint import read_checkpoint

    assert read_checkpoint("c.npz").meta["state"]["epoch"] == 1


@pytest.mark.parametrize("option, writer, what",
                         [("--out", "gpubp.saving.save_model", "the model"),
                          ("--plot", "gpubp.plotting.plot_history", "the plot"),
                          ("--checkpoint", "gpubp.train_checkpoint.write_checkpoint", "the checkpoint")])
def test_a_full_disk_ends_with_one_line_naming_the_file(tmp_path, monkeypatch, capsys, option, writer, what):
    """An OSError while writing an output (ENOSPC here) ends with one line naming the file and the
    OS's reason, status 1, instead of a traceback."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer, full)
    path = tmp_path / "f.npz"
    status, out, err = train_in_process(capsys, "--epochs", "1", "--hidden", "8", "--quiet", option, str(path))
    assert status == 1, out + err
    assert err == f"error: gpubp train: cannot write {what} to {path}: No space left on device\n"


def test_an_os_error_naming_another_file_during_training_names_that_file(tmp_path, monkeypatch, capsys):
    """Training writes only the checkpoint, but an OSError that names another file (the data set,
    read) is that file's, not reported as the checkpoint's."""
    import errno

    from gpubp import cli_train

    def failing_fit(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO), "/data/X.npy")

    monkeypatch.setattr(cli_train, "fit", failing_fit)
    status, out, err = train_in_process(capsys, "--epochs", "1", "--hidden", "8", "--quiet",
                                        "--checkpoint", str(tmp_path / "c.npz"))
    assert status == 1 and err == f"error: gpubp train: /data/X.npy: {os.strerror(errno.EIO)}\n", err


def test_the_resume_hint_quotes_the_checkpoint_path(capsys):
    """The hint printed on interruption pastes into a shell as it is: a path with a space is quoted."""
    import signal

    from gpubp.cli_parser import report
    from gpubp.interrupt import TrainingInterrupted

    assert report(TrainingInterrupted(signal.SIGINT, "run ☃.npz", 2, 90)) == 130
    err = capsys.readouterr().err
    assert err.endswith("; resume with: gpubp train --resume 'run ☃.npz'\n"), err
