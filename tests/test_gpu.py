"""The whole model on CuPy against the NumPy reference (needs a GPU: marker ``gpu``).

Same seed on both backends must give the same loss, every dW and db, and the same parameters
after 20 optimizer steps: float64 to rtol 1e-10, float32 to rtol 1e-4.
"""

import numpy as np
import pytest

from gpubp import MLP, fit, get_backend, to_numpy
from gpubp.optim import make_optimizer
from gpubp.ops import ACTIVATIONS

from .conftest import assert_close

pytestmark = pytest.mark.gpu

RTOL = {"float64": 1e-10, "float32": 1e-4}
ATOL = {"float64": 1e-12, "float32": 1e-6}  # for gradients that are exactly zero on one side


def pair(activation, dtype, sizes=(20, 32, 16, 5), alpha=0.1):
    cpu = MLP(list(sizes), activation, backend="cpu", dtype=dtype, seed=11, alpha=alpha)
    gpu = MLP(list(sizes), activation, backend="cuda", dtype=dtype, seed=11, alpha=alpha)
    return cpu, gpu


def data(n=64, d=20, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, classes, n)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_loss_and_every_gradient_match_numpy(activation, dtype):
    cpu, gpu = pair(activation, dtype)
    for Wc, Wg in zip(cpu.params, gpu.params):
        np.testing.assert_array_equal(Wc, to_numpy(Wg))  # same seed, same initial network
    X, y = data()
    loss_c, dW_c, db_c = cpu.loss_and_grads(X, y)
    loss_g, dW_g, db_g = gpu.loss_and_grads(X, y)
    assert_close(to_numpy(loss_g), loss_c, RTOL[dtype], what=f"{activation} {dtype} loss")
    for l, (gc, gg) in enumerate(zip(dW_c + db_c, dW_g + db_g)):
        assert type(gg).__module__.startswith("cupy")
        assert_close(to_numpy(gg), gc, RTOL[dtype], ATOL[dtype], what=f"{activation} {dtype} grad {l}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer", ["momentum", "nesterov", "adam"])
def test_parameters_after_20_steps_match_numpy(optimizer, dtype):
    cpu, gpu = pair("relu", dtype)
    opt = make_optimizer(optimizer)  # settings only: each network has its own state
    states = [opt.init(net.flat_params) for net in (cpu, gpu)]
    X, y = data(n=320)
    for step in range(20):
        rows = slice(16 * step, 16 * step + 16)
        for net, state in zip((cpu, gpu), states):
            _, g = net.flat_loss_and_grad(net.backend.asarray(X[rows], net.dtype), net.backend.asarray(y[rows]))
            opt.update(net.flat_params, g, state, 0.01)
    for l, (pc, pg) in enumerate(zip(cpu.params, gpu.params)):
        assert_close(to_numpy(pg), pc, RTOL[dtype], ATOL[dtype], what=f"{optimizer} {dtype} param {l}")


def test_fit_on_the_gpu_matches_the_cpu():
    cpu, gpu = pair("tanh", "float64")
    X, y = data(n=200)
    h_c = fit(cpu, X, y, epochs=3, batch_size=32, seed=4, validation_fraction=0.2)
    h_g = fit(gpu, X, y, epochs=3, batch_size=32, seed=4, validation_fraction=0.2)
    assert h_g.device.startswith("cuda")
    np.testing.assert_allclose(h_g.train_loss, h_c.train_loss, rtol=1e-10)
    np.testing.assert_allclose(h_g.val_accuracy, h_c.val_accuracy, rtol=0)
    for pc, pg in zip(cpu.params, gpu.params):
        assert_close(to_numpy(pg), pc, 1e-10, 1e-12, what="parameters after fit")
    P = gpu.predict_proba(X, batch_size=37)
    assert_close(to_numpy(P), cpu.predict_proba(X), 1e-10, 1e-14, what="predict_proba")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_clipped_fit_on_the_gpu_matches_the_cpu_and_its_norm_does_not_overflow(dtype):
    """Clipping's norm is cuBLAS's nrm2 on the card, SciPy's BLAS nrm2 on the CPU: a fit whose
    every step is clipped agrees, and a float32 gradient whose squares overflow is scaled to
    max_norm on the card too."""
    from gpubp.optim import clip_by_global_norm
    cpu, gpu = pair("relu", dtype)
    X, y = data(n=200)
    h_c, h_g = (fit(net, X, y, epochs=3, batch_size=32, seed=4, clip_norm=0.05) for net in (cpu, gpu))
    np.testing.assert_allclose(h_g.train_loss, h_c.train_loss, rtol=RTOL[dtype])
    for pc, pg in zip(cpu.params, gpu.params):
        assert_close(to_numpy(pg), pc, RTOL[dtype], ATOL[dtype], what=f"parameters after a clipped fit ({dtype})")
    xp = get_backend("cuda").xp
    g = xp.full(100_000, 1e19, dtype=xp.float32)
    norm = clip_by_global_norm(xp, [g], 0.5)
    assert float(norm) == pytest.approx(1e19 * np.sqrt(100_000), rel=1e-5)
    assert float(np.linalg.norm(to_numpy(g).astype(np.float64))) == pytest.approx(0.5, rel=1e-5)


def test_device_arrays_are_accepted_and_labels_checked_on_the_host():
    xp = get_backend("cuda").xp
    _, gpu = pair("relu", "float32")
    X, y = data()
    loss, _, _ = gpu.loss_and_grads(xp.asarray(X), xp.asarray(y))
    assert np.isfinite(float(loss))
    with pytest.raises(ValueError, match="labels from 1 to 5 but the network has 5 classes"):
        gpu.loss_and_grads(X, np.where(y == 0, 5, y))


def test_a_checkpoint_written_on_the_gpu_resumes_on_the_cpu(tmp_path):
    X, y = data(n=200)
    settings = dict(epochs=4, batch_size=32, optimizer="adam", seed=2)
    _, gpu = pair("relu", "float64")
    fit(gpu, X, y, checkpoint=tmp_path / "c.npz", checkpoint_every=1,
        callbacks=[lambda epoch, logs: epoch == 2], **settings)
    cpu, whole = pair("relu", "float64")
    fit(cpu, X, y, resume=tmp_path / "c.npz", **settings)
    fit(whole, X, y, **settings)  # uninterrupted, on the GPU
    for pc, pg in zip(cpu.params, whole.params):
        assert_close(pc, to_numpy(pg), 1e-10, 1e-12, what="resumed on the CPU vs uninterrupted on the GPU")


def test_a_checkpoint_written_on_the_gpu_resumes_on_the_gpu_bit_for_bit(tmp_path):
    """Parameters, Adam's moments and the shuffling state come back exactly onto the card, and the
    same kernels run in the same order after: the resumed fit ends as the uninterrupted one."""
    X, y = data(n=200)
    settings = dict(epochs=4, batch_size=32, optimizer="adam", seed=2)
    _, stopped = pair("relu", "float64")
    fit(stopped, X, y, checkpoint=tmp_path / "c.npz", checkpoint_every=1,
        callbacks=[lambda epoch, logs: epoch == 2], **settings)
    resumed = MLP([20, 32, 16, 5], "relu", backend="cuda", dtype="float64", seed=99, alpha=0.1)  # the checkpoint's start
    _, whole = pair("relu", "float64")
    trained = []
    history = fit(resumed, X, y, resume=tmp_path / "c.npz", callbacks=[lambda epoch, logs: trained.append(epoch)],
                  **settings)
    assert trained == [3, 4] and history.train_loss == fit(whole, X, y, **settings).train_loss
    for i, (p, q) in enumerate(zip(resumed.params, whole.params)):
        np.testing.assert_array_equal(to_numpy(p), to_numpy(q), err_msg=f"parameter {i}")


def test_a_model_saved_from_the_gpu_with_a_device_extra_loads_on_either_device(tmp_path):
    import gpubp

    _, gpu = pair("tanh", "float32")
    X, y = data(n=96)
    fit(gpu, X, y, epochs=2, batch_size=32, seed=0)
    gpubp.save_model(gpu, tmp_path / "m.npz", extra={"counts": gpu.xp.asarray([5, 7, 9])})
    for device in ("cuda", "cpu"):
        net, extra = gpubp.load_model(tmp_path / "m.npz", backend=device)
        assert net.backend.name == device and extra["counts"].tolist() == [5, 7, 9]
        for p, q in zip(net.params, gpu.params):
            np.testing.assert_array_equal(to_numpy(p), to_numpy(q))  # a copy, not a computation
    assert_close(to_numpy(net.predict_proba(X)), to_numpy(gpu.predict_proba(X)), RTOL["float32"], ATOL["float32"],
                 what="predict_proba on the cpu vs on the card")


def test_a_step_that_does_not_fit_on_the_card_raises_device_memory_error_with_a_batch_size_that_fits():
    """CuPy's real out-of-memory error (the stand-in's is tested on the CPU): a 262144-row batch
    of a 200000-wide layer needs 210 GB for z alone, more than any card has (an H200 has 141);
    DeviceMemoryError names the allocation and a batch size, and that batch size trains."""
    import re

    from gpubp import DeviceMemoryError

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(262144, 20)).astype(np.float32), rng.integers(0, 10, 262144)
    net = MLP([20, 200_000, 10], "relu", backend="cuda", dtype="float32", seed=0)
    with pytest.raises(DeviceMemoryError) as caught:
        fit(net, X, y, epochs=1, batch_size=262144, seed=0)
    message = str(caught.value)
    assert "out of cuda memory in epoch 1 (step 1) at batch size 262144" in message, message
    assert re.search(r"asked for [0-9][0-9,.]* ?(bytes|[KMGT]i?B)", message), message
    suggested = int(re.search(r"batch size (\d+) should fit", message).group(1))
    assert 1 < suggested < 262144
    history = fit(MLP([20, 200_000, 10], "relu", backend="cuda", dtype="float32", seed=0), X[:4 * suggested],
                  y[:4 * suggested], epochs=1, batch_size=suggested, seed=0)
    assert history.epochs == 1 and np.isfinite(history.train_loss[-1])
