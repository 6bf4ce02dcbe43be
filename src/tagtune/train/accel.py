"""The Accelerator of a run: its device, its mixed precision and its trackers, from the recipe and accelerate.

Precision, first match wins:

1. ``runtime.precision`` in the recipe (or ``--set runtime.precision=...`` / ``--precision``) when it names one;
2. the mixed precision set in accelerate: ``accelerate launch --mixed_precision X``, or the config file that
   ``accelerate launch`` reads (both reach the program as ``ACCELERATE_MIXED_PRECISION``; a launch with neither
   sets it to ``no``, i.e. fp32), or ``ACCELERATE_MIXED_PRECISION`` exported by hand;
3. in a run started without the launcher, ``mixed_precision`` of accelerate's default config file
   (written by ``accelerate config``);
4. ``tagtune.precision``'s default for the device: bf16 on a CPU with native bf16 arithmetic (AVX512_BF16 or
   AMX; full-size v1.5 trains at 3.43x the notebook baseline there, fp32 at 1.45x, and 50 tiny-model steps
   stay within 1 % of fp32's loss at every step), fp32 on other CPUs, bf16 (or fp16) on a GPU.

Trackers: ``runtime.report_to`` names accelerate's tracker (``tensorboard`` writes RUN_DIR/tensorboard/,
``wandb`` a run in RUN_DIR/wandb/); ``auto`` is TensorBoard when it is installed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import yaml
from transformers.pytorch_utils import Conv1D

from tagtune.devices import DeviceError, resolve_device
from tagtune.precision import TRAINING_PRECISIONS, PrecisionError, resolve_precision
from tagtune.train.config import TrainConfig, TrainConfigError
from tagtune.train.metrics import TENSORBOARD_DIR

log = logging.getLogger(__name__)

MIXED_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"
# accelerate's names -> tagtune's (tagtune.precision)
FROM_ACCELERATE = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}
WANDB_PROJECT = "tagtune"


def accelerate_config_file() -> Path:
    """accelerate's default config file (``accelerate config`` writes it; HF_HOME moves it)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expanduser(home)) / "accelerate" / "default_config.yaml"


def accelerate_precision(env: dict[str, str] | None = None, config_file: Path | None = None) -> tuple[str, str] | None:
    """(accelerate's mixed precision in tagtune's name, where it was set), or None when accelerate sets none."""
    env = os.environ if env is None else env
    value, source = env.get(MIXED_PRECISION_ENV), MIXED_PRECISION_ENV
    if value is None:
        path = config_file or accelerate_config_file()
        try:
            settings = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return None
        value = settings.get("mixed_precision") if isinstance(settings, dict) else None
        source = str(path)
        if value is None:
            return None
    name = FROM_ACCELERATE.get(str(value).lower())
    if name is None:
        raise TrainConfigError(f"accelerate's mixed precision {value!r} (from {source}) is not one tagtune trains "
                               f"in ({', '.join(FROM_ACCELERATE)}); set runtime.precision to one of "
                               f"{TRAINING_PRECISIONS}")
    return name, source


def run_precision(config: TrainConfig, device, env: dict[str, str] | None = None,
                  config_file: Path | None = None) -> tuple[str, str]:
    """(the precision a run trains in, why): see the module docstring for the order."""
    wanted, source = config.runtime.precision, "runtime.precision"
    if wanted == "auto":
        from_accelerate = accelerate_precision(env, config_file)
        if from_accelerate is not None:
            wanted, source = from_accelerate
        else:
            source = f"the default for {device.type}"
    try:
        return resolve_precision(wanted, device, TRAINING_PRECISIONS), source
    except PrecisionError as e:
        raise TrainConfigError(f"{e} (precision from {source})") from None


def trackers(report_to: str) -> list[str]:
    """accelerate's ``log_with`` for ``runtime.report_to``; a tracker that is not installed is an error."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    if report_to == "none":
        return []
    if report_to == "auto":
        return ["tensorboard"] if is_tensorboard_available() else []
    installed = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[report_to]()
    if not installed:
        raise TrainConfigError(f"runtime.report_to is {report_to!r}, but {report_to} is not installed: "
                               f"pip install 'tagtune[{report_to}]' (or report_to: none)")
    return [report_to]


def make_accelerator(config: TrainConfig, run_dir: Path):
    """The run's Accelerator: device and precision checked and chosen, trackers named (not yet started)."""
    from accelerate import Accelerator

    try:
        device = resolve_device(config.runtime.device)
    except DeviceError as e:
        raise TrainConfigError(f"runtime.device: {e}") from None
    precision, source = run_precision(config, device)
    mixed = {"fp32": "no"}.get(precision, precision)
    _forget_other_precision(mixed)
    accel = Accelerator(cpu=device.type == "cpu", mixed_precision=mixed,
                        log_with=trackers(config.runtime.report_to) or None, project_dir=str(run_dir))
    log.info("training on %s in %s (precision from %s)", accel.device, precision, source)
    return accel


def _forget_other_precision(mixed: str) -> None:
    """Drop the state of an earlier Accelerator of this process that trained in another mixed precision.

    accelerate keeps one AcceleratorState per process and refuses a second precision, but a process that trains
    twice (a notebook, a test session) may change it between runs: a run in the CPU default (bf16
    where the CPU has it) and then a recipe that pins fp32. The process group (PartialState) stays.
    """
    from accelerate.state import AcceleratorState

    held = AcceleratorState._shared_state.get("_mixed_precision")
    if held is not None and held != mixed:
        AcceleratorState._reset_state()


def start_trackers(accel, config: TrainConfig, run_dir: Path) -> None:
    """Open the trackers on the main process: TensorBoard under RUN_DIR/tensorboard/, wandb in RUN_DIR/wandb/."""
    if not accel.log_with:
        return
    names = {str(getattr(t, "value", t)) for t in accel.log_with}
    init = {"wandb": {"dir": str(run_dir), "name": run_dir.name}} if "wandb" in names else {}
    project = WANDB_PROJECT if "wandb" in names else TENSORBOARD_DIR
    # TensorBoard writes to project_dir/<project name>; wandb keeps the whole recipe as the run's config
    accel.init_trackers(project, config=_flat(config.to_dict()), init_kwargs=init)


def _flat(tree: dict, prefix: str = "") -> dict:
    """Nested recipe -> {"optim.lr": 1e-4, ...} with plain scalar values (what trackers store as hyperparameters)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float, str, bool)):
            out[f"{prefix}{key}"] = value
        elif value is not None:
            out[f"{prefix}{key}"] = str(value)
    return out


class HeldConv1D(Conv1D):
    """A frozen GPT-2 Conv1D whose weight is held in bf16.

    Under autocast its matmul reads the bf16 weight as it is; autocast would round an fp32 weight to the same
    bf16 values at every forward, so the numbers are those of the fp32 weight trained in bf16, without the cast
    or the fp32 copy. Outside autocast (the neutral tag-row fit, samples spoken at validation) it computes in fp32
    from the bf16 values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if torch.is_autocast_enabled(x.device.type) else self.weight.float()
        out = torch.addmm(self.bias, x.reshape(-1, x.size(-1)), w)
        return out.view(*x.shape[:-1], self.nf)


def base_weights_dtype(config: TrainConfig, precision: str) -> torch.dtype:
    """The dtype the frozen base's block matrices are held in (``runtime.base_weights``) for a run in ``precision``."""
    wanted = config.runtime.base_weights
    if wanted == "auto":
        return torch.bfloat16 if precision == "bf16" and config.lora.mode == "lora" else torch.float32
    if wanted == "bf16" and precision != "bf16":
        raise TrainConfigError(f"runtime.base_weights bf16 needs training under bf16 autocast; this run trains in "
                               f"{precision} (set runtime.precision: bf16)")
    if wanted == "bf16" and config.lora.mode != "lora":
        raise TrainConfigError("runtime.base_weights bf16 holds the frozen base in bf16; lora.mode full trains it")
    return torch.bfloat16 if wanted == "bf16" else torch.float32


@torch.no_grad()
def hold_frozen_weights(gpt, dtype: torch.dtype) -> int:
    """Hold every frozen Conv1D of the GPT's blocks in ``dtype`` (bf16: as ``HeldConv1D``); the bytes saved."""
    if dtype == torch.float32:
        return 0
    saved = 0
    for module in gpt.gpt.h.modules():
        if type(module) is Conv1D and not module.weight.requires_grad:
            saved += module.weight.numel() * (module.weight.element_size() - 2)
            module.weight = torch.nn.Parameter(module.weight.to(dtype), requires_grad=False)
            module.__class__ = HeldConv1D
    return saved
