"""gpubp: backpropagation for multilayer perceptrons, readable line by line, on CPU or GPU.

The four equations (row form, see gpubp.mlp) and where they live:

- BP1 ``delta[L] = (softmax(z[L]) - Y) / n``        ops.softmax_minus_y
- BP2 ``delta[l] = (delta[l+1] @ W[l+1].T) * f'(z[l])``  ops.backprop_delta
- BP3 ``db[l] = delta[l].sum(0)``                   ops.backprop_delta (db=), the output layer's in MLP.flat_loss_and_grad
- BP4 ``dW[l] = a[l-1].T @ delta[l]``               MLP.flat_loss_and_grad
"""

from . import distributed  # gpubp.distributed.world(): the communicator of this process
from .backend import Backend, cuda_status, get_backend, to_numpy
from .checkpoint import read_checkpoint
from .errors import BackendUnavailableError, DataError, DeviceMemoryError, DivergenceError, RankFailedError
from .interrupt import TrainingInterrupted
from .estimators import MLPClassifier, MLPRegressor, load_estimator
from .mlp import MLP
from .optim import SGD, Adam
from .saving import load_model, save_model
from .schedules import Schedule
from .config import TrainConfig
from .history import History
from .train import Trainer, fit
from .version import __version__

__all__ = [
    "MLP", "MLPClassifier", "MLPRegressor", "load_estimator", "fit", "Trainer", "TrainConfig", "History", "SGD", "Adam", "Schedule",
    "Backend", "get_backend", "cuda_status", "to_numpy", "save_model", "load_model",
    "read_checkpoint", "BackendUnavailableError", "DataError", "DeviceMemoryError", "DivergenceError", "RankFailedError",
    "TrainingInterrupted", "distributed", "__version__",
]
