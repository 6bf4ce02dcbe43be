"""Training recipe settings: typed dataclasses that check themselves, read from and written to YAML.

A recipe (``configs/lora.yaml``) is a serialised ``TrainConfig``. Unknown keys are errors (a typo must not
silently fall back to a default), and every value is checked in ``__post_init__``: first its type against
the field's annotation (``tagtune.config.check_fields``), then its range.

Numbers in a recipe follow YAML 1.2, as JSON does: ``1e-4`` is a number (PyYAML's YAML 1.1 would read it
as a string). A quoted value is a string, and a string is never accepted where a number belongs.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tagtune.config import check_fields
from tagtune.errors import UserError
from tagtune.lora import DEFAULT_TARGETS, MODES, LoraSpec
from tagtune.precision import TRAINING_PRECISIONS
from tagtune.tags.rows import TAG_INITS

DEVICES = ("auto", "cpu", "cuda")
# where training metrics go besides metrics.jsonl/csv, through accelerate's trackers: "auto" is TensorBoard when
# it is installed (the tensorboard extra) and nothing otherwise; wandb needs the wandb extra
REPORT_TO = ("auto", "tensorboard", "wandb", "none")
# CLI flag name -> dotted field it overrides
CLI_OVERRIDES = {
    "max_steps": "schedule.max_steps",
    "epochs": "schedule.epochs",
    "batch_size": "batch.batch_size",
    "lr": "optim.lr",
    "rank": "lora.rank",
    "seed": "seed",
    "neutral_steps": "lora.neutral_steps",
    "device": "runtime.device",
    "precision": "runtime.precision",
    "report_to": "runtime.report_to",
    "replay": "replay.data",
    "replay_fraction": "replay.fraction",
    "replay_events": "replay.events",
    "event_cuts": "augment.event_cuts",
    "tag_contrast": "loss.tag_contrast",
}


class TrainConfigError(UserError):
    """A recipe value that cannot work; the message names the field."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise TrainConfigError(message)


def _check_types(settings, section: str) -> None:
    check_fields(settings, f"{section}." if section else "", TrainConfigError)


class _RecipeLoader(yaml.SafeLoader):
    """Safe YAML (plain values only) that also reads exponent numbers without a dot (``1e-4``) as floats."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def read_recipe_yaml(path: Path) -> Any:
    """The plain data of a recipe file; any YAML problem becomes one line naming the file and the place."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError as e:
        raise TrainConfigError(f"{path}: not a text file ({e.reason})") from None
    except yaml.constructor.ConstructorError as e:
        where = f" at line {e.problem_mark.line + 1}" if e.problem_mark else ""
        raise TrainConfigError(f"{path}: refused{where}: {e.problem}; a recipe holds plain values only "
                               "(YAML tags that build Python objects are never loaded)") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TrainConfigError(f"{path}: invalid YAML{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise TrainConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None


@dataclass
class LoraSettings:
    """What trains: LoRA on the GPT-2 blocks (``mode: lora``) or every GPT weight (``mode: full``)."""

    mode: str = "lora"
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    layers: list[int] | None = None  # block indices; None = every block
    # conditioning encoder (bar its input subsampling) + perceiver, and v2's emotion branch (frozen by default)
    train_conditioning: bool = False
    # new tag rows: "mean" (mean row direction at typical norm), "plain" (the plain mean row), "words"
    # (mean of the tag's word pieces) or "neutral" (one row fitted so the untrained tag leaves the base's
    # predictions as they are without it; tagtune.tags.neutral)
    tag_init: str = "mean"
    neutral_steps: int = 100  # Adam steps of the "neutral" fit (8 untagged clips each)
    neutral_lr: float = 1e-2

    def __post_init__(self):
        _check_types(self, "lora")
        _check(self.mode in MODES, f"lora.mode must be one of {MODES}, got {self.mode!r}")
        _check(self.rank >= 1, f"lora.rank must be >= 1, got {self.rank}")
        _check(self.alpha > 0, f"lora.alpha must be > 0, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, f"lora.dropout must be in [0, 1), got {self.dropout}")
        _check(bool(self.targets), "lora.targets must name at least one module")
        _check(self.tag_init in TAG_INITS, f"lora.tag_init must be one of {TAG_INITS}, got {self.tag_init!r}")
        _check(self.neutral_steps >= 0, f"lora.neutral_steps must be >= 0, got {self.neutral_steps}")
        _check(self.neutral_lr > 0, f"lora.neutral_lr must be > 0, got {self.neutral_lr}")
        _check(self.layers is None or (len(self.layers) > 0 and min(self.layers) >= 0),
               f"lora.layers must be null or non-negative block indices, got {self.layers}")

    def spec(self) -> LoraSpec:
        """The library's LoRA spec for these settings."""
        return LoraSpec(self.mode, self.rank, self.alpha, self.dropout, tuple(self.targets),
                        tuple(self.layers) if self.layers is not None else None, self.train_conditioning)


@dataclass
class OptimSettings:
    """AdamW; tag rows get ``lr * tag_lr_scale`` and no weight decay."""

    lr: float = 1e-4
    tag_lr_scale: float = 5.0
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping

    def __post_init__(self):
        _check_types(self, "optim")
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _check(self.tag_lr_scale > 0, f"optim.tag_lr_scale must be > 0, got {self.tag_lr_scale}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"optim.betas invalid: {self.betas}")
        _check(self.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {self.grad_clip}")


@dataclass
class ScheduleSettings:
    """Length of the run and the learning-rate curve (linear warmup, then cosine to ``min_lr_ratio``)."""

    epochs: int = 10
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1

    def __post_init__(self):
        _check_types(self, "schedule")
        _check(self.epochs >= 1, f"schedule.epochs must be >= 1, got {self.epochs}")
        _check(self.max_steps is None or self.max_steps >= 1, f"schedule.max_steps must be >= 1, got {self.max_steps}")
        _check(self.warmup_steps >= 0, f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(0.0 <= self.min_lr_ratio <= 1.0, f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class BatchSettings:
    """Micro-batch per process; one optimizer step sees batch_size x grad_accum x processes clips."""

    batch_size: int = 8
    grad_accum: int = 2

    def __post_init__(self):
        _check_types(self, "batch")
        _check(self.batch_size >= 1, f"batch.batch_size must be >= 1, got {self.batch_size}")
        _check(self.grad_accum >= 1, f"batch.grad_accum must be >= 1, got {self.grad_accum}")


@dataclass
class LossSettings:
    """loss = text CE x text_weight + mel CE; ``mask_padding`` drops padding from attention and loss.

    ``onset_weight``: the weight of the first ``onset_codes`` codes of each tagged event in the mel CE (1: as
    every other code). Those codes are where a decoder decides whether the event begins, and where the tag is
    weighed least without it (docs/transfer.md, "Where the Chinese hits are lost").

    ``tag_contrast``: the weight of the tag-contrast term (``models.contrast``, docs/tag-contrast.md; 0: off):
    each tagged clip's event, scored also under its text with the tag replaced by another tag or removed, must be
    ``contrast_margin`` nats likelier under its own text. Needs event boundaries; costs one more forward of each
    tagged clip that has them."""

    text_weight: float = 0.1
    mask_padding: bool = True
    onset_weight: float = 1.0
    onset_codes: int = 2
    tag_contrast: float = 0.0
    contrast_margin: float = 3.0

    def __post_init__(self):
        _check_types(self, "loss")
        _check(self.text_weight >= 0, f"loss.text_weight must be >= 0, got {self.text_weight}")
        _check(self.onset_weight >= 0, f"loss.onset_weight must be >= 0, got {self.onset_weight}")
        _check(self.onset_codes >= 1, f"loss.onset_codes must be >= 1, got {self.onset_codes}")
        _check(self.tag_contrast >= 0, f"loss.tag_contrast must be >= 0, got {self.tag_contrast}")
        _check(self.contrast_margin >= 0, f"loss.contrast_margin must be >= 0, got {self.contrast_margin}")


@dataclass
class ModelSettings:
    dropout: float = 0.1  # GPT-2 attn/resid dropout (official value 0.1)
    gradient_checkpointing: bool = False

    def __post_init__(self):
        _check_types(self, "model")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class EvalSettings:
    """Validation, checkpoints, the forgetting guard and the samples spoken at each validation."""

    every_steps: int = 100
    save_every_steps: int = 100  # resumable checkpoint interval (also written at each validation)
    keep_last: int = 3
    forgetting_tolerance_pct: float = 5.0  # warn when untagged val loss exceeds the base model's by this much
    sample_sentences: list[str] = field(default_factory=list)  # spoken at each validation (`tagtune train`)
    sample_reference: str | None = None  # their voice (an audio file); null: an untagged validation clip

    def __post_init__(self):
        _check_types(self, "eval")
        _check(self.every_steps >= 1, f"eval.every_steps must be >= 1, got {self.every_steps}")
        _check(self.save_every_steps >= 1, f"eval.save_every_steps must be >= 1, got {self.save_every_steps}")
        _check(self.keep_last >= 1, f"eval.keep_last must be >= 1, got {self.keep_last}")
        _check(self.forgetting_tolerance_pct >= 0, "eval.forgetting_tolerance_pct must be >= 0")


@dataclass
class ReplaySettings:
    """Untagged clips of another prepared DATA_DIR (same base) mixed into training: many voices and both
    languages keep a single-speaker fine-tune from pulling every voice toward its speaker (docs/transfer.md).

    ``data``: the replay DATA_DIR (null: no replay); ``fraction``: the share of replay clips in the training mix;
    ``events``: the share of those replay clips that carry one event cut from a tagged fine-tune clip, with its
    tag, at an edge of their text (train/splice.py): tags seen in the replay's voices and languages;
    ``event_pairs``: each such clip is also trained on as recorded, so the same voice and text come once with the
    tag and the event and once with neither (otherwise the spliced clip replaces it);
    ``events_at_end``: the share of those events put after their clip (null: after, before or between two clips
    alike), for a tag that ends the text (docs/transfer.md, "Where the Chinese hits are lost");
    ``base_kl``: weight of a second term on the replay clips as recorded (not spliced), the KL divergence from the
    frozen base's next-code distribution to the tuned model's, per code (train/base_kl.py; 1.x): the tuned model
    is held to what the base would say in those voices, not only to the codes they said.
    """

    data: str | None = None
    fraction: float = 0.3
    events: float = 0.0
    event_pairs: bool = False
    events_at_end: float | None = None
    base_kl: float = 0.0

    def __post_init__(self):
        _check_types(self, "replay")
        _check(0.0 < self.fraction <= 0.9, f"replay.fraction must be in (0, 0.9], got {self.fraction}")
        _check(0.0 <= self.events <= 1.0, f"replay.events must be in [0, 1], got {self.events}")
        _check(self.events_at_end is None or 0.0 <= self.events_at_end <= 1.0,
               f"replay.events_at_end must be in [0, 1] or null, got {self.events_at_end}")
        _check(self.base_kl >= 0.0, f"replay.base_kl must be >= 0, got {self.base_kl}")


@dataclass
class AugmentSettings:
    """Extra training clips made from the fine-tune corpus itself by its recorded event boundaries.

    ``event_cuts``: the share of tagged clips also trained on once more with every event's codes cut out and
    every tag taken from the text (train/splice.py): the same context without the event, against events
    where no tag stands.
    """

    event_cuts: float = 0.0

    def __post_init__(self):
        _check_types(self, "augment")
        _check(0.0 <= self.event_cuts <= 1.0, f"augment.event_cuts must be in [0, 1], got {self.event_cuts}")


BASE_WEIGHTS = ("auto", "fp32", "bf16")


@dataclass
class RuntimeSettings:
    device: str = "auto"
    # "auto": the mixed precision set in accelerate (``accelerate launch --mixed_precision``, its config file,
    # ACCELERATE_MIXED_PRECISION) when there is one, else tagtune.precision's default for the device (bf16 on
    # a CPU with native bf16, where it trains ~2.4x faster than fp32 with the loss within 1 %; fp32 on other
    # CPUs; bf16 or fp16 on a GPU). A named precision here always wins.
    precision: str = "auto"
    # the frozen base's block matrices: "bf16" holds them in bf16 (half their memory, no cast at each forward),
    # which under bf16 autocast gives the same numbers as fp32 weights (autocast rounds them the same way);
    # "auto": bf16 when the run trains under bf16 autocast in lora mode, else fp32
    base_weights: str = "auto"
    log_every_steps: int = 10
    progress_bar: bool = True
    report_to: str = "auto"

    def __post_init__(self):
        _check_types(self, "runtime")
        _check(self.device in DEVICES, f"runtime.device must be one of {DEVICES}, got {self.device!r}")
        _check(self.report_to in REPORT_TO, f"runtime.report_to must be one of {REPORT_TO}, got {self.report_to!r}")
        _check(self.precision in ("auto", *TRAINING_PRECISIONS),
               f"runtime.precision must be one of {('auto', *TRAINING_PRECISIONS)}, got {self.precision!r}")
        _check(self.base_weights in BASE_WEIGHTS,
               f"runtime.base_weights must be one of {BASE_WEIGHTS}, got {self.base_weights!r}")
        _check(self.log_every_steps >= 1, "runtime.log_every_steps must be >= 1")


SECTIONS = {
    "lora": LoraSettings, "optim": OptimSettings, "schedule": ScheduleSettings, "batch": BatchSettings,
    "loss": LossSettings, "model": ModelSettings, "eval": EvalSettings, "replay": ReplaySettings,
    "augment": AugmentSettings, "runtime": RuntimeSettings,
}


@dataclass
class TrainConfig:
    """The whole recipe. ``TrainConfig.from_yaml(path)`` reads a shipped or user YAML."""

    seed: int = 1234
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

    def __post_init__(self):
        for name, cls in SECTIONS.items():
            value = getattr(self, name)
            if value is None:  # a section whose keys are all commented out
                value = {}
            if isinstance(value, dict):
                setattr(self, name, _section(cls, value, name))
        _check_types(self, "")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TrainConfig:
        _check(data is None or isinstance(data, dict),
               f"a recipe must be a mapping of sections (seed, {', '.join(SECTIONS)}), got a {type(data).__name__}")
        data = dict(data or {})
        unknown = sorted(set(data) - set(SECTIONS) - {"seed"})
        _check(not unknown, f"unknown recipe key(s) {unknown}; known: seed, {', '.join(SECTIONS)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise TrainConfigError(f"{path}: recipe not found")
        data = read_recipe_yaml(path)
        try:
            return cls.from_dict(data)
        except TrainConfigError as e:
            raise TrainConfigError(f"{path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_settings(self, settings: dict[str, Any]) -> TrainConfig:
        """A copy with dotted recipe keys set (``{"optim.lr": 3e-4, "seed": 7}``), checked like a recipe file.

        A key that names no recipe field is an error listing the keys of its section.
        """
        data = self.to_dict()
        for key, value in settings.items():
            *parents, leaf = key.split(".")
            node, fields_here, where = data, {f.name: f for f in dataclasses.fields(TrainConfig)}, ""
            for part in parents:
                _check(not where, f"unknown recipe key {key!r}: {where}.{part} is not a section")
                _check(part in SECTIONS, f"unknown recipe key {key!r}: the recipe has no section {part!r}; "
                                         f"sections: {', '.join(SECTIONS)}")
                node, fields_here, where = node[part], {f.name: f for f in dataclasses.fields(SECTIONS[part])}, part
            known = sorted(n for n in fields_here if where or n not in SECTIONS)
            _check(leaf in known, f"unknown recipe key {key!r}; known in {where or 'the top level'}: "
                                  f"{', '.join(known)}" + ("" if where else f" (sections: {', '.join(SECTIONS)})"))
            node[leaf] = value
        return TrainConfig.from_dict(data)

    @classmethod
    def of(cls, recipe: TrainConfig | str | Path | dict | None = None, **overrides: Any) -> TrainConfig:
        """The recipe named by plain values: a ``TrainConfig``, a YAML path, a mapping of sections, or None (the
        shipped ``configs/lora.yaml``), with ``overrides`` (keys of ``CLI_OVERRIDES``) applied."""
        if recipe is None:
            from tagtune.folders import shipped_recipe

            recipe = shipped_recipe()
        if isinstance(recipe, dict):
            recipe = cls.from_dict(recipe)
        elif not isinstance(recipe, TrainConfig):
            recipe = cls.from_yaml(recipe)
        return recipe.with_overrides(**overrides)

    def with_overrides(self, **values: Any) -> TrainConfig:
        """A copy with CLI overrides applied (keys of ``CLI_OVERRIDES``; ``None`` values are ignored)."""
        data = self.to_dict()
        for name, value in values.items():
            _check(name in CLI_OVERRIDES, f"unknown override {name!r}; known: {sorted(CLI_OVERRIDES)}")
            if value is None:
                continue
            *parents, leaf = CLI_OVERRIDES[name].split(".")
            node = data
            for p in parents:
                node = node[p]
            node[leaf] = value
        return TrainConfig.from_dict(data)


def parse_setting(text: str, example: str = "optim.lr=3e-4") -> tuple[str, Any]:
    """``"section.key=value"`` -> (``"section.key"``, value); the value is read as in a recipe file (YAML 1.2
    numbers, ``null``, ``[a, b]`` lists)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    _check(bool(sep) and bool(key) and all(key.split(".")), f"expected KEY=VALUE (e.g. {example}), got {text!r}")
    try:
        value = yaml.load(raw, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise TrainConfigError(f"{key}: cannot read the value {raw!r} ({' '.join(str(e).split())})") from None
    return key, value


def _section(cls, data: dict[str, Any], name: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    _check(not unknown, f"unknown key(s) {unknown} in section '{name}'; known: {sorted(names)}")
    return cls(**data)
